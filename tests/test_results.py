"""The README's result block and docs/results.md are what the committed result files give."""

import pandas as pd
import pytest

from dssbt import results


def test_readme_and_results_page_equal_what_the_committed_results_give():
    assert results.main(["--check"]) == 0, "README.md or docs/results.md is stale: run python -m dssbt.results"


def test_the_check_fails_when_the_readme_disagrees(tmp_path, monkeypatch):
    readme = (results.ROOT / "README.md").read_text()
    block = results.readme_block()
    edited = readme.replace(block, block.replace("|", "||", 1))
    assert edited != readme
    (tmp_path / "README.md").write_text(edited)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text(results.results_page())
    monkeypatch.setattr(results, "ROOT", tmp_path)
    assert results.main(["--check"]) == 1


def _row(diff, significant, **kw):
    return pd.Series({"diff": diff, "significant": significant, **kw})


def test_a_direction_is_written_only_for_a_significant_difference():
    assert results.verdict(_row(0.05, True)) == "BT-init ahead"
    assert results.verdict(_row(-0.05, True)) == "BT-init behind"
    assert results.verdict(_row(0.20, False)) == "no measurable difference at this power"


def test_a_table_without_a_primary_contrast_is_refused():
    d = pd.DataFrame([{"primary": False, "task": "image"}])
    with pytest.raises(ValueError, match="no primary contrast"):
        results.primary_table(d, pd.DataFrame())
