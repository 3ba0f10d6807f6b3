"""docs/compressibility.md's restated conclusions: its p (Holm) and smallest-detectable columns are what
statsmodels and scipy give from its interval column (no hand arithmetic)."""

import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from dssbt.aggregate import detectable_from_interval, p_from_t_interval, sd_from_t_interval

DOC = Path(__file__).resolve().parents[1] / "docs" / "compressibility.md"
ROW = re.compile(
    r"^\| (\w+) \| (\d+) % \| ([\w. -]+) \| ([+-][\d.]+) \[([+-][\d.]+), ([+-][\d.]+)\] \| ([\d.]+) \| ([\d.]+) \| (.+) \|$"
)


def test_the_interval_helpers_invert_scipys_paired_t_interval():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0.8, 0.03, 5), rng.normal(0.78, 0.03, 5)
    res = stats.ttest_rel(x, y)
    ci = res.confidence_interval(0.95)
    d = x - y
    assert sd_from_t_interval(ci.low, ci.high, 5) == pytest.approx(np.std(d, ddof=1), rel=1e-12)
    assert p_from_t_interval(np.mean(d), ci.low, ci.high, 5) == pytest.approx(res.pvalue, rel=1e-10)
    x80 = detectable_from_interval(ci.low, ci.high, 5)
    power = TTestPower().power(effect_size=x80 / np.std(d, ddof=1), nobs=5, alpha=0.05)
    assert power == pytest.approx(0.8, abs=1e-6)
    with pytest.raises(ValueError, match="n >= 2"):
        sd_from_t_interval(-1, 1, 1)


def test_the_compressibility_doc_columns_are_computed_from_its_intervals():
    rows = [m.groups() for line in DOC.read_text().splitlines() if (m := ROW.match(line))]
    assert len(rows) == 27
    diff, low, high = (np.array([float(r[i]) for r in rows]) for i in (3, 4, 5))
    p = [p_from_t_interval(*a, 3) for a in zip(diff, low, high)]
    holm = multipletests(p, method="holm")[1]
    for r, h, d, lo, hi in zip(rows, holm, diff, low, high):
        assert float(r[6]) == pytest.approx(h, abs=0.005), r
        assert float(r[7]) == pytest.approx(detectable_from_interval(lo, hi, 3), abs=0.05), r
        assert r[8] == ("not observed at this power" if h >= 0.05 else ("behind plain" if d < 0 else "ahead of plain"))
