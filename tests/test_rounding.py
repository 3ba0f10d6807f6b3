"""dssbt.rounding: a verdict held only where both runs say the same thing."""

import pandas as pd
import pytest

from dssbt import rounding


def table(rows):
    cols = ["task", "order_spec", "init", "versus", "diff", "boot_low", "boot_high", "p_holm", "significant"]
    return pd.DataFrame(rows, columns=cols)


BASE = [
    ("image", 4, "bt_init", "skew_hippo_equal", 0.05, 0.01, 0.09, 0.01, True),  # ahead
    ("image", 4, "bt_init", "transplant_init", 0.20, 0.10, 0.30, 0.001, True),  # ahead
    ("pathfinder", 4, "bt_init", "skew_hippo_equal", 0.02, -0.01, 0.05, 0.3, False),  # no difference
]


def test_a_significant_win_that_loses_significance_in_the_rerun_did_not_hold():
    rerun = [list(r) for r in BASE]
    rerun[0][4:] = [0.03, -0.01, 0.07, 0.2, False]  # the first win fades
    rerun[2][4:] = [0.01, -0.03, 0.04, 0.6, False]  # another non-difference: held
    out = rounding.compare(table(BASE), table(rerun))
    assert out["held"].tolist() == [False, True, True]
    assert out["verdict"].tolist() == [
        "BT-init ahead",
        "BT-init ahead",
        "no measurable difference at this power",
    ]
    assert out["verdict_rerun"].iloc[0] == "no measurable difference at this power"


def test_a_flipped_direction_did_not_hold():
    rerun = [list(r) for r in BASE]
    rerun[1][4:] = [-0.2, -0.3, -0.1, 0.001, True]
    out = rounding.compare(table(BASE), table(rerun))
    assert out["held"].tolist() == [True, False, True]


def test_a_rerun_of_another_grid_is_refused():
    with pytest.raises(ValueError, match="not in the rerun.*pathfinder 4 bt_init skew_hippo_equal"):
        rounding.compare(table(BASE), table(BASE[:2]))


def test_the_command_writes_the_comparison_beside_the_run(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    table(BASE).to_csv(tmp_path / "a" / "differences.csv", index=False)
    table(BASE).to_csv(tmp_path / "b" / "differences.csv", index=False)
    assert rounding.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert pd.read_csv(tmp_path / "a" / "rounding.csv")["held"].all()
    assert "3 of 3 verdicts held" in (tmp_path / "a" / "rounding.md").read_text()


def test_claim_two_rows_are_matched_by_the_versus_order_too():
    """BT-init r=4 against the equal-budget control at r=4 (primary) and at r=8 (claim 2) share task, order, init and
    versus: each is matched with its own row of the rerun, never the other's (a merge on four keys crossed them)."""
    cols = ["task", "order_spec", "versus_order_spec", "init", "versus", "diff", "boot_low", "boot_high", "p_holm"]
    rows = [
        ("image", 4, 4, "bt_init", "skew_hippo_equal", 0.028, 0.010, 0.048, 0.009),  # ahead
        ("image", 4, 8, "bt_init", "skew_hippo_equal", -0.003, -0.02, 0.015, 1.0),  # no difference
        ("image", 4, None, "bt_no_retrain", "skew_hippo_equal", -0.5, -0.6, -0.4, None),  # no versus order: r itself
    ]
    base = pd.DataFrame(rows, columns=cols)
    base["significant"] = [True, False, False]
    rerun = base.copy()
    rerun.loc[0, ["diff", "p_holm", "significant"]] = [0.029, 0.011, True]
    out = rounding.compare(base, rerun)
    assert len(out) == 3
    assert out["versus_order_spec"].tolist() == ["4", "8", "4"]
    assert out["diff_rerun"].tolist() == [0.029, -0.003, -0.5]
    assert out["held"].tolist() == [True, True, True]
    twice = pd.concat([base, base.iloc[[0]]])
    with pytest.raises(ValueError, match="repeat a comparison"):
        rounding.compare(twice, rerun)
