"""The README's result block and docs/results.md are what the committed result files give."""

import shutil

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.power import TTestPower
from test_aggregate import claim2_runs

from dssbt import results
from dssbt.aggregate import differences_table, runs_table


def test_readme_and_results_page_equal_what_the_committed_results_give():
    assert results.main(["--check"]) == 0, "README.md or docs/results.md is stale: run python -m dssbt.results"


def test_the_check_fails_when_the_readme_disagrees(tmp_path, monkeypatch):
    readme = (results.ROOT / "README.md").read_text()
    block = results.readme_block()
    edited = readme.replace(block, block.replace("|", "||", 1))
    assert edited != readme
    (tmp_path / "README.md").write_text(edited)
    shutil.copytree(results.results_dir(), tmp_path / "docs" / "results")
    (tmp_path / "docs" / "results.md").write_text(results.results_page())
    monkeypatch.setattr(results, "ROOT", tmp_path)
    assert results.main(["--check"]) == 1


def _row(diff, significant, **kw):
    return pd.Series({"diff": diff, "significant": significant, **kw})


def test_a_direction_is_written_only_for_a_significant_difference():
    assert results.verdict(_row(0.05, True)) == "BT-init ahead"
    assert results.verdict(_row(-0.05, True)) == "BT-init behind"
    assert results.verdict(_row(0.20, False)) == "no measurable difference at this power"
    assert results.verdict(_row(0.20, False), 0.0712) == (
        "no measurable difference at this power (smallest detectable effect 7.1 points at 80 % power)"
    )
    assert results.verdict(_row(0.20, False, in_family=False)).startswith("exploratory")


def test_a_table_without_a_primary_contrast_is_refused():
    d = pd.DataFrame([{"primary": False, "task": "image"}])
    with pytest.raises(ValueError, match="docs/results/s/differences.csv has no primary contrast"):
        results.primary_table({"s": (d, pd.DataFrame())})


@pytest.fixture
def study_root(tmp_path, monkeypatch):
    """A repository root in tmp_path: a README with the result block and one committed study, ``evidence``
    (synthetic: claim2_runs of test_aggregate, 4 seeds, orders 2 to 16, N = 32)."""
    f, acc, _ = claim2_runs(tmp_path / "runs")
    runs = runs_table(f)
    primary = {"method": "bt", "control": "skew_hippo_equal", "order": 4}
    d = differences_table(runs, primary=primary, family=["primary", "claim2"])
    study = tmp_path / "root" / "docs" / "results" / "evidence"
    study.mkdir(parents=True)
    runs.to_csv(study / "runs.csv", index=False)
    d.to_csv(study / "differences.csv", index=False)
    (tmp_path / "root" / "README.md").write_text(f"# x\n\n{results.BEGIN}\nold\n{results.END}\n\nafter\n")
    monkeypatch.setattr(results, "ROOT", tmp_path / "root")
    return tmp_path / "root", acc


def test_a_committed_study_is_rendered_and_checked(study_root):
    root, acc = study_root
    assert results.main([]) == 0 and results.main(["--check"]) == 0
    readme = (root / "README.md").read_text()
    x = np.subtract(acc[("bt_init", 4)], acc[("skew_hippo_equal", 4)])  # the primary contrast's per-seed differences
    es = TTestPower().solve_power(effect_size=None, nobs=4, alpha=0.05, power=0.8, alternative="two-sided")
    detectable = 100 * es * np.std(x, ddof=1)
    assert f"| evidence | t | BT-init − Skew-HiPPO, equal budget, r = 4 | 4 | {100 * np.mean(x):+.1f} | n/a |" in readme
    assert f"smallest detectable effect {detectable:.1f} points at 80 % power" in readme
    assert readme.endswith("\n\nafter\n") and "[docs/results.md](docs/results.md)" in readme
    page = (root / "docs" / "results.md").read_text()
    sections = [line for line in page.splitlines() if line.startswith("### ")]
    assert sections[:3] == [
        "### Primary contrast",
        "### Claim 2: BT-init at r against more parameters (larger orders, full N continued)",
        "### Other comparisons (claim1)",
    ]
    assert "| t | BT-init r=4 − Full N, continued N=32 | 60 / 200 | 4 |" in page  # both arms' parameters
    assert "exploratory (outside the Holm family: raw p only)" in page  # claim1 rows are outside this family


def test_the_check_fails_when_a_committed_study_changes(study_root, capsys):
    root, _ = study_root
    assert results.main([]) == 0
    path = root / "docs" / "results" / "evidence" / "differences.csv"
    d = pd.read_csv(path)
    d.loc[d["primary"], "diff"] += 0.01
    d.to_csv(path, index=False)
    assert results.main(["--check"]) == 1
    assert "README.md differs from the committed results" in capsys.readouterr().err


def test_the_readme_says_whether_a_verdict_held_when_only_rounding_changed(study_root):
    """A rerun folder whose primary contrast turns significant: the run's row says **no** naming the rerun and its verdict, the
    rerun's row says whose rerun it is; docs/results.md shows the rounding table."""
    root, _ = study_root
    base = root / "docs" / "results" / "evidence"
    rerun = root / "docs" / "results" / "evidence-kernels-c"
    rerun.mkdir()
    shutil.copy(base / "runs.csv", rerun / "runs.csv")
    d = pd.read_csv(base / "differences.csv")
    assert not d.loc[d["primary"], "significant"].any()  # the synthetic primary contrast: no measurable difference
    d.loc[d["primary"], ["diff", "boot_low", "boot_high", "p_holm", "significant"]] = [0.05, 0.02, 0.08, 0.001, True]
    d.to_csv(rerun / "differences.csv", index=False)
    from dssbt import rounding

    assert rounding.main([str(base), str(rerun)]) == 0
    assert results.main([]) == 0 and results.main(["--check"]) == 0
    rows = [line for line in (root / "README.md").read_text().splitlines() if line.startswith("| evidence")]
    assert len(rows) == 2
    assert rows[0].startswith("| evidence | t |")
    assert rows[0].endswith("| **no**: not a conclusion (evidence-kernels-c: BT-init ahead) |")
    assert rows[1].startswith("| evidence-kernels-c | t |") and rows[1].endswith("| rerun of evidence |")
    page = (root / "docs" / "results.md").read_text()
    assert "### Verdicts when only float rounding changed (`rounding.md`)" in page
    assert "verdicts held when only float rounding changed (evidence vs evidence-kernels-c)" in page


def test_without_a_rerun_the_readme_says_not_rerun(study_root):
    root, _ = study_root
    assert results.main([]) == 0
    row = next(line for line in (root / "README.md").read_text().splitlines() if line.startswith("| evidence"))
    assert row.endswith("| not rerun |")


def test_a_frontier_folder_is_shown_with_its_tables_and_figure(study_root):
    """A folder without differences.csv (a compressibility run) is no study of the README's table, but
    docs/results.md shows its README, compress.md, frontier_differences.md and links its figures."""
    root, _ = study_root
    folder = root / "docs" / "results" / "frontier_small"
    folder.mkdir()
    (folder / "README.md").write_text("How it was run.\n")
    (folder / "compress.md").write_text("| task | kept |\n| --- | --- |\n| image | 0.1 |\n")
    (folder / "frontier_differences.md").write_text("| task | method |\n| --- | --- |\n| image | last |\n")
    (folder / "frontier.png").write_bytes(b"\x89PNG")
    assert results.main([]) == 0 and results.main(["--check"]) == 0
    page = (root / "docs" / "results.md").read_text()
    assert "## `frontier_small`\n\nHow it was run." in page
    assert "### Accuracy at global state budgets (`compress.md`)\n\n| task | kept |" in page
    assert "### Each method − BT at the same budget (`frontier_differences.md`)\n\n| task | method |" in page
    assert "![frontier](results/frontier_small/frontier.png)" in page
    assert "frontier_small" not in (root / "README.md").read_text()
