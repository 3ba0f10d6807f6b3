"""A test's missing dependency: skipped with the reason on a developer's machine, a failure under CI (env CI set),
where `.ci/run` installs every dependency the tests have, so a skip there would hide a broken install."""

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    """Skip the running test with ``reason``; under CI fail it instead."""
    if os.environ.get("CI"):
        pytest.fail(f"missing under CI: {reason}")
    pytest.skip(reason)


def need_module(name: str, reason: str) -> ModuleType:
    """``pytest.importorskip`` that fails under CI: the module, or a skip (CI: a failure) saying why it is needed."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        missing(f"{reason} ({e})")
