"""The compressibility study's table (dssbt.compress) against a hand computation on fixed numbers."""

import json

import numpy as np
import pytest
from scipy import stats

from dssbt.compress import markdown, points, table


def metrics(path, acc, orders, d_model=4, epochs=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "accuracy": {"test": acc},
                "layer_orders": orders,
                "epochs_run": epochs,
                "model_config": {"d_model": d_model, "bidirectional": False},
            }
        )
    )
    return str(path)


@pytest.fixture
def rows(tmp_path):
    acc = {  # (variant, kind, seed) -> test accuracy
        ("plain", "pretrained"): [0.80, 0.82, 0.78],
        ("plain", "reduced"): [0.30, 0.40, 0.35],
        ("plain", "retrained"): [0.70, 0.74, 0.69],
        ("hsvreg0.001", "pretrained"): [0.79, 0.80, 0.77],
        ("hsvreg0.001", "reduced"): [0.60, 0.66, 0.58],
        ("hsvreg0.001", "retrained"): [0.76, 0.79, 0.74],
        ("shrink0.25", "retrained"): [0.72, 0.73, 0.70],
    }
    out = []
    for (variant, kind), values in acc.items():
        for seed, a in enumerate(values):
            keep = 1.0 if kind == "pretrained" else 0.25
            orders = [8, 8] if kind == "pretrained" else [3, 1]
            out.append(
                dict(
                    task="listops",
                    seed=seed,
                    variant=variant,
                    keep=keep,
                    kind=kind,
                    metrics=metrics(tmp_path / f"{variant}_{kind}_{seed}.json", a, orders),
                )
            )
    return out


def test_table_rows_are_the_seed_statistics_and_paired_t_intervals(rows):
    tab = table(points(rows))
    assert list(tab["variant"]) == ["plain", "hsvreg0.001", "shrink0.25"]
    assert set(tab["removed_pct"]) == {75} and set(tab["states"]) == {(3 + 1) * 4}
    hsv = tab[tab.variant == "hsvreg0.001"].iloc[0]
    assert hsv.pretrained_mean == pytest.approx(100 * np.mean([0.79, 0.80, 0.77]))
    assert hsv.reduced_std == pytest.approx(100 * np.std([0.60, 0.66, 0.58], ddof=1))
    x, y = 100 * np.array([0.76, 0.79, 0.74]), 100 * np.array([0.70, 0.74, 0.69])
    d = x - y  # by hand: mean +- t_{0.975, 2} * sd / sqrt(3)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert (hsv.vs_plain_diff, hsv.vs_plain_ci_low, hsv.vs_plain_ci_high) == pytest.approx(
        (d.mean(), d.mean() - half, d.mean() + half)
    )
    shrink = tab[tab.variant == "shrink0.25"].iloc[0]
    assert shrink.pretrained_n == 0 and shrink.reduced_n == 0 and shrink.retrained_n == 3
    plain = tab[tab.variant == "plain"].iloc[0]
    assert plain.vs_plain_n_pairs == 0


def test_markdown_marks_only_intervals_that_exclude_zero(rows):
    md = markdown(table(points(rows)))
    line = next(ln for ln in md.splitlines() if "hsv_reg 0.001" in ln)
    assert "| listops | 75 % | 16 | hsv_reg 0.001 | 78.7 ± 1.5 | 61.3 ± 4.2 | 76.3 ± 2.5 | **+5.3 [" in line
    shrink = next(ln for ln in md.splitlines() if "in-training reduction" in ln)
    assert "| – | – | 71.7 ± 1.5 |" in shrink and "**" not in shrink  # +0.7, its interval spans 0
