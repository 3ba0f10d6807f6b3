"""tests/needs.py: a missing dependency skips a test on a developer's machine and fails it under CI."""

import pytest
from needs import missing, need_module


def test_a_missing_module_skips_without_ci_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="the oracle"):
        need_module("dssbt_no_such_module", "the oracle")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="missing under CI: the oracle"):
        need_module("dssbt_no_such_module", "the oracle")
    with pytest.raises(pytest.fail.Exception, match="no compiler"):
        missing("no compiler")
    assert need_module("json", "stdlib").dumps([]) == "[]"
