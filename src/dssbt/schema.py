"""The workflow's config schema with the registries' names filled in.

``workflow/schemas/config.schema.yaml`` says where a task or an archive name goes (``$ref: "#/definitions/task"``,
``"#/definitions/archive"``) but lists none: :func:`config_schema` fills those two enums from the task registry
(:mod:`dssbt.data.tasks`) and ``dssbt.data.download.ARCHIVES``, so a task is declared in one place. The Snakefile
validates the config against it (:func:`derived_schema_file`: Snakemake's ``validate`` reads a schema file, not a
dict).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def config_schema(path: str | os.PathLike) -> dict[str, Any]:
    """The schema at ``path`` (YAML or JSON) with ``definitions.task.enum`` = the registered tasks and
    ``definitions.archive.enum`` = their archives, in registration order."""
    import yaml

    from .data import tasks
    from .data.download import ARCHIVES

    schema = yaml.safe_load(Path(path).read_text())
    defs = schema.get("definitions", {})
    for key in ("task", "archive"):
        if key not in defs:
            raise ValueError(f"{path}: definitions.{key} missing (where the registry's names go)")
        if "enum" in defs[key]:
            raise ValueError(f"{path}: definitions.{key} lists an enum; the registry fills it in (one source)")
    defs["task"]["enum"] = list(tasks.names())
    defs["archive"]["enum"] = list(ARCHIVES)
    return schema


@contextmanager
def derived_schema_file(path: str | os.PathLike) -> Iterator[str]:
    """A temporary JSON file holding :func:`config_schema` of ``path`` (removed on exit); yields its path."""
    schema = config_schema(path)
    with tempfile.TemporaryDirectory(prefix="dssbt-schema-") as tmp:
        out = Path(tmp) / "config.schema.json"
        out.write_text(json.dumps(schema, indent=1))
        yield str(out)
