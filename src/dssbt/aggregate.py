"""Accuracy tables from the metrics files of every run (long form, then mean ± std over seeds, then the paired
differences between inits with their 95 % confidence intervals).

Inits in the tables: ``skew_hippo_equal`` (a model of order r trained from the Skew-HiPPO init for the pretraining
+ retraining epochs: the equal-budget control), ``skew_hippo`` (the same for the pretraining epochs only),
``{method}_init`` (order r, retrained from the pretrained model reduced by ``method``: bt, bsp, modal, h2, or a
control such as transplant), ``{method}_no_retrain`` (the reduced model as is), and at order N the full-N
reference ``skew_hippo`` (the pretrained model) and ``full_continued`` (that model trained for the retraining
epochs more: a control).

Budget: every run states its own epochs and wall time and its total: a run that starts from the pretrained model
(``*_init``, ``*_no_retrain``, ``full_continued``) adds the epochs and wall time of that pretraining (the ``pretrain/metrics.json`` of
the same task and seed, found by the run folder layout ``<task>/seed<s>/<run>/metrics.json``).

Differences: for each task and order, every init minus a baseline (the equal-budget control first, then plain
Skew-HiPPO) is the mean over seeds of the per-seed difference (paired by seed: the same pretrained model, data
order and initial RNG state), with the two-sided 95 % Student-t interval of that mean
(``scipy.stats.ttest_rel(...).confidence_interval``); with one pair there is no interval.

Uncertainty, multiplicity and power (``differences_table``; DESIGN.md section 8): each difference also gets

- a 95 % interval over seeds *and* test items (``seed_item_bootstrap``: a two-way percentile bootstrap of the
  per-item correctness stored in each run's ``predictions.npz``, B = ``BOOTSTRAP_B`` replicates, generator seed
  ``BOOTSTRAP_SEED``; NaN where a run has no predictions file or fewer than 2 seeds pair), beside the seed-only
  Student-t interval, which ignores the binomial noise of a finite test set;
- the raw p of the paired t test over seeds (``scipy.stats.ttest_rel``) and the Holm-adjusted p over the family of
  every row of the table with a p (``statsmodels.stats.multitest.multipletests(method="holm")``);
- ``significant``: Holm-adjusted p < ``ALPHA`` *and* the seed × item interval excludes 0;
- ``seeds_for_power``: the seeds a paired t test needs for ``POWER`` power at an effect of ``power_effect``
  (accuracy, default 2 points), given the observed sd of the per-seed differences
  (``statsmodels.stats.power.TTestPower``; one-sample on the differences);
- ``primary``: the one pre-declared primary contrast (``primary={"method", "control", "order"}``: e.g. BT-init
  minus the equal-budget Skew-HiPPO at order 4), listed first.

Orders are grouped by how they were asked for (``order_spec``): an integer r, or ``tol:<x>`` where every layer got
its own order; ``order`` is then the mean state size over layers (and seeds, in the summary).

A run whose training diverged and that finished with its best checkpoint before it (``optim.on_divergence:
keep_best``; metrics ``diverged: true``) is marked: ``diverged`` in the runs table, the count ``n_diverged`` in the
summary, and a ``†`` on its cell in the Markdown and LaTeX tables, explained in a footnote below them.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from . import grid
from .evaluate import load_predictions, predictions_path
from .io import atomic_path
from .provenance import mixed_provenance
from .reduction.registry import METHODS, REDUCTIONS
from .runs import table_init

METHOD_NAMES = {name: m.label for name, m in METHODS.items()}
# The table keys and labels come from the catalog of run kinds (dssbt.grid), read when a table is made; these
# constants are the catalog as imported (the plots read them).
LABELS = grid.table_labels()  # table key -> label, in table order
BASELINE_LABELS = grid.baselines()  # the order-r models trained from a fresh init (equal budget first)
VERSUS = tuple(grid.versus())  # the baselines every other key is compared with, in the order the tables show them
CONTINUED_LABELS = grid.continued()
INIT_ORDER = list(LABELS)
CONFIDENCE = 0.95
ALPHA = 0.05  # significance level of the Holm-adjusted p (and of the power calculation)
BOOTSTRAP_B = 2000  # replicates of the seed x item bootstrap
BOOTSTRAP_SEED = 0  # its generator's seed (numpy.random.default_rng): every difference starts from the same state
POWER = 0.8  # the power the seeds_for_power column is computed for
POWER_EFFECT = 0.02  # the paired effect (accuracy; 0.02 = 2 points) it is computed at


def reduction_method(init: str) -> str | None:
    """The reduction method of a table init (``bt_init`` -> ``bt``, ``random_modes_no_retrain`` ->
    ``random_modes``); None for a baseline (``skew_hippo``, ``skew_hippo_equal``)."""
    return grid.method_of(init)


def starts_from_pretrained(init: str) -> bool:
    """Whether a run of this table init starts from the pretrained model (its pretraining counts in its budget)."""
    return grid.starts_from_pretrained(init)


def pretrained_metrics_path(path: str | os.PathLike) -> Path:
    """The metrics of the pretrained model a reduced or retrained run came from: same task and seed folder."""
    return Path(path).parent.parent / "pretrain" / "metrics.json"


def runs_table(metrics_files: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per run: task, seed, order, N, init, method, accuracies, losses, parameter counts, epochs and wall
    time (the run's own and in total, pretraining included where the run starts from the pretrained model)."""
    rows = []
    pretrained: dict[Path, dict] = {}
    for path in metrics_files:
        m = json.loads(Path(path).read_text())
        init = table_init(m)
        layer_orders = m.get("layer_orders") or [m["order"]]
        spec = str(m.get("order_spec") or m["order"])
        epochs, wall = m.get("epochs_run", 0), m.get("wall_time_s")
        total_epochs, total_wall = epochs, wall
        if starts_from_pretrained(init):  # its pretraining counts in its budget
            pre_path = pretrained_metrics_path(path)
            if pre_path not in pretrained:
                if not pre_path.exists():
                    raise ValueError(
                        f"{path}: a {init} run counts the epochs of its pretrained model, but {pre_path} is missing"
                    )
                pretrained[pre_path] = json.loads(pre_path.read_text())
            pre = pretrained[pre_path]
            total_epochs = epochs + pre.get("epochs_run", 0)
            total_wall = None if wall is None or pre.get("wall_time_s") is None else wall + pre["wall_time_s"]
        rows.append(
            {
                "task": m["task"],
                "seed": m["seed"],
                "order_spec": spec,
                "order": m["order"] if spec.isdigit() else float(np.mean(layer_orders)),
                "layer_orders": " ".join(str(r) for r in layer_orders),
                "N": m["N"],
                "reference": spec == str(m["N"]),
                "init": init,
                "method": reduction_method(init),
                "test_accuracy": m["accuracy"]["test"],
                "val_accuracy": m["accuracy"]["val"],
                "train_accuracy": m["accuracy"].get("train"),
                "test_loss": m["loss"]["test"],
                "params_total": m["params"]["total"],
                "params_ssm": m["params"]["ssm"],
                "n_classes": (m.get("model_config") or {}).get("d_output"),  # None in files without the config
                "epochs_run": epochs,
                "diverged": bool(m.get("diverged", False)),  # files written before the key existed: not diverged
                "wall_time_s": wall,
                "total_epochs": total_epochs,
                "total_wall_time_s": total_wall,
                "file": str(path),
            }
        )
    if not rows:
        raise ValueError("no metrics files given")
    return pd.DataFrame(rows).sort_values(["task", "order", "order_spec", "init", "seed"], ignore_index=True)


def paired_difference(x: np.ndarray, y: np.ndarray, confidence: float = CONFIDENCE) -> dict[str, float]:
    """Mean of the paired differences ``x_i - y_i`` (float (n,) each, pair i = one seed) with its two-sided
    Student-t confidence interval (``scipy.stats.ttest_rel``, n - 1 degrees of freedom).

    Returns {diff, ci_low, ci_high, n_pairs}; with fewer than 2 pairs the interval is NaN (none can be given),
    with none the difference too. Equal differences in every pair give the interval [diff, diff].
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples must be two 1-d arrays of one length, got shapes {x.shape}, {y.shape}")
    n = len(x)
    if n == 0:
        return {"diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n_pairs": 0}
    diff = float(np.mean(x - y))
    if n < 2:
        return {"diff": diff, "ci_low": np.nan, "ci_high": np.nan, "n_pairs": 1}
    if np.all(x - y == (x - y)[0]):  # no spread: scipy warns (catastrophic cancellation); the limit is a point
        return {"diff": diff, "ci_low": diff, "ci_high": diff, "n_pairs": n}
    ci = stats.ttest_rel(x, y).confidence_interval(confidence)
    return {"diff": diff, "ci_low": float(ci.low), "ci_high": float(ci.high), "n_pairs": n}


def _no_spread(d: np.ndarray) -> bool:
    """Whether the paired differences ``d`` are all equal up to float rounding (accuracies are fractions k/n whose
    differences may differ in the last bit): there is no spread to test against."""
    return bool(np.ptp(d) <= 1e-12 * max(1.0, float(np.max(np.abs(d)))))


def paired_t_pvalue(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p of the paired t test of ``x - y`` (float (n,) each) over seeds (``scipy.stats.ttest_rel``);
    NaN with fewer than 2 pairs or no spread in the differences (the t statistic is undefined there)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or _no_spread(x - y):
        return np.nan
    return float(stats.ttest_rel(x, y).pvalue)


def seeds_for_power(
    diffs: np.ndarray, effect: float = POWER_EFFECT, power: float = POWER, alpha: float = ALPHA
) -> float:
    """The number of seeds (pairs) a two-sided paired t test at level ``alpha`` needs to detect a mean paired
    difference of ``effect`` with probability ``power``, the sd of the differences taken as the observed one
    (``diffs``: float (n,), per-seed differences; sd with n - 1 degrees of freedom). Paired = one-sample on the
    differences: ``statsmodels.stats.power.TTestPower().solve_power(effect / sd, ...)``, rounded up.

    NaN with fewer than 2 differences or none of spread (no sd to plan with). Where the effect is so large that the
    solver finds no root (it needs fewer than 2 pairs), 2, the least a t test can use, if that reaches ``power``."""
    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) < 2 or _no_spread(diffs):
        return np.nan
    es = abs(effect) / float(np.std(diffs, ddof=1))
    analysis = TTestPower()
    with warnings.catch_warnings():
        # statsmodels warns where it returns NaN: handled below (imported above: importing sm_exceptions installs an
        # "always" filter for its warning, which would override this one if it ran inside the block)
        warnings.simplefilter("ignore", ConvergenceWarning)
        n = analysis.solve_power(effect_size=es, nobs=None, alpha=alpha, power=power, alternative="two-sided")
    n = float(np.squeeze(n))
    if np.isnan(n):
        return 2.0 if analysis.power(effect_size=es, nobs=2, alpha=alpha, alternative="two-sided") >= power else n
    return float(max(2, math.ceil(n)))


def seed_item_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int = BOOTSTRAP_B,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, float]:
    """Two-way (seeds x test items) percentile bootstrap interval of the paired mean difference of accuracy.

    ``a``, ``b``: per-item correctness (bool or 0/1, (S, n)) of the two arms; row s = seed s of both (paired), column
    i = test item i, the same items in the same order in every row of both (the test set is shared by seeds and
    arms). Replicate k draws, from ``numpy.random.default_rng(seed)`` and in this order, S seed indices
    (``rng.integers(0, S, S)``) and then n item indices (``rng.integers(0, n, n)``), both with replacement; its
    statistic is the mean of ``a - b`` over the drawn seeds x the drawn items. One item draw serves every drawn seed
    and both arms: the design is crossed (every seed scored the same items), so an item that favours one arm in
    every seed moves every seed's difference at once, as a new test set would (resampling items independently per
    seed would shrink that shared item effect by the number of seeds). The interval is the (1 - confidence) / 2 and
    (1 + confidence) / 2 percentiles of the ``n_boot`` statistics (``numpy.percentile``, linear).

    Returns {boot_low, boot_high, n_items}; NaN bounds with fewer than 2 seeds (no seed spread to resample).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            f"correctness of both arms must be (seeds, items) arrays of one shape, got {a.shape}, {b.shape}"
        )
    S, n = a.shape
    if S < 2 or n == 0:
        return {"boot_low": np.nan, "boot_high": np.nan, "n_items": n}
    d = a - b  # (S, n) in {-1, 0, 1}
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    chunk = max(1, min(n_boot, 2**22 // max(n, 1)))  # replicates per matrix product (~32 MiB of item counts)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        seeds, items = np.empty((k, S)), np.empty((k, n))
        for j in range(k):  # the draws in the documented order: seeds, then items, replicate after replicate
            seeds[j] = np.bincount(rng.integers(0, S, S), minlength=S)
            items[j] = np.bincount(rng.integers(0, n, n), minlength=n)
        # sum over drawn seeds and items of d = seed counts @ d @ item counts
        out[start : start + k] = np.einsum("ks,sk->k", seeds, d @ items.T) / (S * n)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(out, [tail, 100 - tail])
    return {"boot_low": float(low), "boot_high": float(high), "n_items": n}


def item_correctness(metrics_file: str | os.PathLike, accuracy: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(correct bool (n,), labels (n,)) of a run's test items, from the ``predictions.npz`` beside its metrics
    file; FileNotFoundError where there is none. ``accuracy``: the metrics' test accuracy, which the predictions
    must reproduce exactly (ValueError otherwise: they would not be the evaluated model's)."""
    path = predictions_path(metrics_file)
    pred, labels = load_predictions(path)["test"]
    correct = pred == labels
    if accuracy is not None and len(correct) and abs(float(np.mean(correct)) - accuracy) > 1e-12:
        raise ValueError(f"{path}: test accuracy {np.mean(correct)} of the predictions, {accuracy} in {metrics_file}")
    return correct, labels


def _seed_item_interval(files: pd.DataFrame, accs: pd.DataFrame, init: str, versus: str, n_boot: int, seed: int):
    """``seed_item_bootstrap`` of ``init`` - ``versus`` over the seeds both have (index of ``accs``), from the
    predictions of each run (``files``: metrics file per seed x init); NaN where any prediction file is missing."""
    rows = {init: [], versus: []}
    labels = None
    for s in accs.index:
        for arm in (init, versus):
            try:
                correct, lab = item_correctness(files.at[s, arm], accs.at[s, arm])
            except FileNotFoundError:
                return {"boot_low": np.nan, "boot_high": np.nan, "n_items": np.nan}
            if labels is None:
                labels = lab
            elif not np.array_equal(lab, labels):
                raise ValueError(
                    f"{files.at[s, arm]}: scored on other test items than {files.at[accs.index[0], init]} "
                    "(labels differ): a paired comparison needs one test set"
                )
            rows[arm].append(correct)
    return seed_item_bootstrap(np.array(rows[init]), np.array(rows[versus]), n_boot, seed)


def retrained_controls(inits) -> list[str]:
    """The retrained control inits among ``inits`` (``transplant_init``, ``random_modes_init``), in registry order:
    the further baselines of every retrained init (what the reduced SSM adds beyond the copied weights, or beyond
    any r pretrained modes)."""
    return [f"{m}_init" for m, method in METHODS.items() if method.control and f"{m}_init" in set(inits)]


DIFFERENCE_COLUMNS = [
    "task",
    "order_spec",
    "order",
    "init",
    "versus",
    "versus_order_spec",
    "versus_order",
    "claim",
    "primary",
    "in_family",
    "diff",
    "ci_low",
    "ci_high",
    "boot_low",
    "boot_high",
    "n_pairs",
    "n_items",
    "sd",
    "p",
    "p_holm",
    "significant",
    "seeds_for_power",
    "power_effect",
    "detectable_effect",
    "params_total",
    "params_ssm",
    "versus_params_total",
    "versus_params_ssm",
]

# The comparison groups of the ``claim`` column, in the order the tables list them (after the primary contrast):
# primary: the pre-declared primary contrast; claim1: a reduction's retrained model against a baseline trained from
# scratch at the same order r; claim2: a reduction's retrained model at r against the equal-budget Skew-HiPPO at
# every larger integer order of the grid and against the full-N model continued (full_continued: the same budget,
# pretraining + retraining epochs); balancing: a reduction's retrained model against a retrained control (top-energy
# modes, random modes, transplant: what the reduction adds beyond a naive choice of r modes or the copied weights);
# controls: a control (retrained control, full_continued) against its baseline; no_retrain: a reduced model as is;
# baselines: one baseline against another (Skew-HiPPO against its equal-budget twin).
CLAIMS = ("primary", "claim1", "claim2", "balancing", "controls", "no_retrain", "baselines")


def primary_contrast(primary: dict[str, Any] | None) -> tuple[str, str, str] | None:
    """(init, versus, order_spec) of a declared primary contrast {method, control, order} (e.g. {"method": "bt",
    "control": "skew_hippo_equal", "order": 4} -> ("bt_init", "skew_hippo_equal", "4")); None for None."""
    if primary is None:
        return None
    missing = {"method", "control", "order"} - set(primary)
    if missing:
        raise ValueError(f"primary contrast {primary!r}: missing key(s) {sorted(missing)} (method, control, order)")
    method = primary["method"]
    init = method if method in BASELINE_LABELS or method.endswith(("_init", "_no_retrain")) else f"{method}_init"
    return init, str(primary["control"]), str(primary["order"])


def check_family(family: Iterable[str] | None) -> list[str] | None:
    """The declared family (config ``evidence.family``) as a list of ``CLAIMS`` groups; ValueError naming the key
    and the value for an unknown group; None stays None (every row with a p enters the Holm adjustment)."""
    if family is None:
        return None
    family = [str(f) for f in family]
    unknown = [f for f in family if f not in CLAIMS]
    if unknown:
        raise ValueError(f"evidence.family: unknown group(s) {unknown}; known: {list(CLAIMS)}")
    return family


def is_reduction_init(init: str) -> bool:
    """Whether ``init`` is a reduction method's retrained model (``bt_init``; not a control's ``transplant_init``)."""
    return init.endswith("_init") and reduction_method(init) in REDUCTIONS


def claim_of(init: str, versus: str, same_order: bool) -> str:
    """The ``CLAIMS`` group of the comparison ``init`` − ``versus`` (primary is decided by the caller)."""
    if init.endswith("_no_retrain"):
        return "no_retrain"
    if is_reduction_init(init):
        if not same_order:
            return "claim2"
        if versus in BASELINE_LABELS:
            return "claim1"
        return "balancing"
    if init in BASELINE_LABELS:
        return "baselines"
    return "controls"


def smallest_detectable_effect(sd: float, n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest mean paired difference (in the unit of ``sd``) that a two-sided paired t test over ``n`` pairs
    at level ``alpha`` detects with probability ``power``, the sd of the differences being ``sd``:
    ``sd * TTestPower().solve_power(nobs=n, effect_size=None, ...)`` (statsmodels; one-sample on the differences).
    NaN with n < 2 or sd NaN; 0 for sd 0."""
    if n < 2 or sd is None or np.isnan(sd):
        return np.nan
    if sd == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        es = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided")
    return float(np.squeeze(es)) * float(sd)


def sd_from_t_interval(low: float, high: float, n: int, confidence: float = CONFIDENCE) -> float:
    """The sd of n paired differences behind a two-sided Student-t interval [low, high] of their mean (as
    ``paired_difference`` and the tables print it): half-width = t_{(1+confidence)/2, n-1} · sd / sqrt(n)
    (``scipy.stats.t.ppf``). For restating a published table whose raw differences are not at hand."""
    if n < 2:
        raise ValueError(f"a t interval needs n >= 2 pairs, got n={n}")
    return (high - low) / 2 * math.sqrt(n) / float(stats.t.ppf((1 + confidence) / 2, n - 1))


def detectable_from_interval(low: float, high: float, n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest paired effect (in the interval's unit) that n pairs detect with ``power`` at level ``alpha``,
    the sd being the one behind the 95 % t interval [low, high] (``sd_from_t_interval``,
    ``smallest_detectable_effect``)."""
    return smallest_detectable_effect(sd_from_t_interval(low, high, n), n, power, alpha)


def p_from_t_interval(diff: float, low: float, high: float, n: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided p of the paired t test behind a mean difference ``diff`` and its Student-t interval [low,
    high] over n pairs: t = diff / (sd / sqrt(n)) with the sd of ``sd_from_t_interval``, p = 2 · sf(|t|, n - 1)
    (``scipy.stats.t``). Rounded inputs give an approximate p."""
    se = sd_from_t_interval(low, high, n, confidence) / math.sqrt(n)
    return float(2 * stats.t.sf(abs(diff) / se, n - 1)) if se > 0 else (0.0 if diff else 1.0)


def _integer_spec(spec: str) -> bool:
    return str(spec).isdigit()


def differences_table(
    runs: pd.DataFrame,
    primary: dict[str, Any] | None = None,
    power_effect: float = POWER_EFFECT,
    n_boot: int = BOOTSTRAP_B,
    boot_seed: int = BOOTSTRAP_SEED,
    family: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Long form: per task × order spec × init × baseline (``versus`` at ``versus_order_spec``), the paired
    difference of test accuracy over the seeds both have (``paired_difference``: diff, the seed-only t interval
    ci_low/ci_high, n_pairs; sd: the sd of the per-seed differences), the seed × item interval boot_low/boot_high
    over n_items test items (``seed_item_bootstrap`` on the runs' predictions), the raw p of the paired t test
    (``paired_t_pvalue``), its Holm adjustment p_holm over the family, ``significant`` (p_holm < ALPHA and the seed
    × item interval excludes 0), the seeds needed for POWER power at ``power_effect`` (``seeds_for_power``), the
    smallest effect the seeds detect with POWER power (``detectable_effect``, ``smallest_detectable_effect``), both
    arms' mean parameter counts and ``primary``: the row of the declared primary contrast (``primary_contrast``).

    Rows: every init against skew_hippo_equal and skew_hippo (``VERSUS``) at its own order; every retrained init
    (``*_init``) also against each retrained control (``retrained_controls``); at order N the pretrained model
    (``skew_hippo``) is the baseline of ``full_continued``. Claim 2: every reduction's retrained init at an integer
    order r also against the equal-budget Skew-HiPPO at each larger integer order of the task and against
    ``full_continued``. ``claim`` names each row's group (``CLAIMS``, ``claim_of``).

    ``family``: the groups of ``CLAIMS`` that enter the Holm adjustment (config ``evidence.family``); rows outside
    it have ``in_family`` False and p_holm NaN (exploratory: raw p only, never significant). None: every row with
    a p. Order: the primary contrast first, then by group (``CLAIMS``), then as built. No rows for an init against
    itself."""
    family = check_family(family)
    rows = []
    key = primary_contrast(primary)
    for task, t in runs.groupby("task", sort=False):
        t = t.assign(order_spec=t["order_spec"].astype(str))
        acc = t.pivot_table(index="seed", columns=["order_spec", "init"], values="test_accuracy", aggfunc="first")
        files = t.pivot_table(index="seed", columns=["order_spec", "init"], values="file", aggfunc="first")
        arms = t.groupby(["order_spec", "init"])[["order", "params_total", "params_ssm"]].mean()
        group_order = t.groupby("order_spec", sort=False)["order"].mean()

        def compare(spec: str, init: str, vspec: str, versus: str) -> None:
            both = pd.DataFrame({init: acc[(spec, init)], versus: acc[(vspec, versus)]}).dropna()
            pair_files = pd.DataFrame({init: files[(spec, init)], versus: files[(vspec, versus)]})
            x, y = both[init].to_numpy(), both[versus].to_numpy()  # (n_pairs,) each
            d = paired_difference(x, y)
            sd = float(np.std(x - y, ddof=1)) if len(x) > 1 else np.nan
            is_primary = key == (init, versus, spec) and spec == vspec
            rows.append(
                {
                    "task": task,
                    "order_spec": spec,
                    "order": group_order[spec],
                    "init": init,
                    "versus": versus,
                    "versus_order_spec": vspec,
                    "versus_order": arms.at[(vspec, versus), "order"],
                    "claim": "primary" if is_primary else claim_of(init, versus, spec == vspec),
                    "primary": is_primary,
                    **d,
                    **_seed_item_interval(pair_files, both, init, versus, n_boot, boot_seed),
                    "sd": sd,
                    "p": paired_t_pvalue(x, y),
                    "seeds_for_power": seeds_for_power(x - y, power_effect),
                    "power_effect": power_effect,
                    "detectable_effect": smallest_detectable_effect(sd, len(x)),
                    "params_total": arms.at[(spec, init), "params_total"],
                    "params_ssm": arms.at[(spec, init), "params_ssm"],
                    "versus_params_total": arms.at[(vspec, versus), "params_total"],
                    "versus_params_ssm": arms.at[(vspec, versus), "params_ssm"],
                }
            )

        specs = list(dict.fromkeys(t["order_spec"]))
        for spec in specs:
            present = [i for i in acc[spec].columns if acc[(spec, i)].notna().any()]
            controls = retrained_controls(present)
            for versus in [*grid.versus(), *controls]:
                if versus not in present:
                    continue
                for init in present:
                    if init == versus or (versus in controls and not init.endswith("_init")):
                        continue
                    compare(spec, init, spec, versus)
        # claim 2: BT-init at r against more parameters: the equal-budget Skew-HiPPO at larger orders, full N continued
        integer = sorted((s for s in specs if _integer_spec(s)), key=int)
        continued = [(s, i) for s in specs for i in CONTINUED_LABELS if (s, i) in acc.columns]
        for spec in integer:
            for init in [i for i in acc[spec].columns if is_reduction_init(i) and acc[(spec, i)].notna().any()]:
                for larger in integer:
                    if int(larger) > int(spec) and (larger, "skew_hippo_equal") in acc.columns:
                        compare(spec, init, larger, "skew_hippo_equal")
                for vspec, versus in continued:
                    compare(spec, init, vspec, versus)
    computed = [c for c in DIFFERENCE_COLUMNS if c not in ("in_family", "p_holm", "significant")]
    table = pd.DataFrame(rows, columns=computed)
    table["in_family"] = table["claim"].isin(CLAIMS if family is None else family) & table["p"].notna()
    table["p_holm"] = np.nan
    tested = table["in_family"].to_numpy()
    if tested.any():
        table.loc[tested, "p_holm"] = multipletests(table.loc[tested, "p"].to_numpy(), method="holm")[1]
    excludes_0 = (table["boot_low"] > 0) | (table["boot_high"] < 0)  # False where NaN
    table["significant"] = ((table["p_holm"] < ALPHA) & excludes_0).astype(bool)
    table["rank"] = [CLAIMS.index(c) for c in table["claim"]]
    table = table.sort_values("rank", kind="stable", ignore_index=True)
    return table[DIFFERENCE_COLUMNS]


def summary_table(runs: pd.DataFrame, differences: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per task × order × init: mean ± std of test accuracy over seeds and their number, parameter counts, mean
    epochs and wall time (own and total), and for each baseline b of ``VERSUS`` the paired difference to it
    (``diff_vs_<b>``, ``ci_low_vs_<b>``, ``ci_high_vs_<b>``, ``n_pairs_vs_<b>``, ``significant_vs_<b>``,
    ``boot_low_vs_<b>``, ``boot_high_vs_<b>``, ``p_holm_vs_<b>``; empty for b itself and a missing b), taken from
    ``differences`` (default: ``differences_table(runs)``)."""
    g = runs.groupby(["task", "order_spec", "init"], sort=False)
    s = g.agg(
        order=("order", "mean"),
        N=("N", "first"),
        reference=("reference", "first"),
        acc_mean=("test_accuracy", "mean"),
        acc_std=("test_accuracy", lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else np.nan),
        n_seeds=("seed", "nunique"),
        n_diverged=("diverged", "sum"),
        params_total=("params_total", "mean"),  # differs between seeds only for tolerance-chosen orders
        params_ssm=("params_ssm", "mean"),
        epochs_run=("epochs_run", "mean"),
        total_epochs=("total_epochs", "mean"),
        wall_time_s=("wall_time_s", "mean"),
        total_wall_time_s=("total_wall_time_s", "mean"),
    ).reset_index()
    d = differences_table(runs) if differences is None else differences
    if "versus_order_spec" in d:  # the same order only (claim 2 compares with larger orders: not a summary column)
        d = d[d["versus_order_spec"].astype(str) == d["order_spec"].astype(str)]
    d = d.set_index(["task", "order_spec", "init", "versus"])
    for versus in grid.versus():
        key = [(t, o, i, versus) for t, o, i in zip(s["task"], s["order_spec"], s["init"])]
        for col in ("diff", "ci_low", "ci_high", "n_pairs", "significant", "boot_low", "boot_high", "p_holm"):
            s[f"{col}_vs_{versus}"] = [d.at[k, col] if k in d.index else np.nan for k in key]
    s["init_rank"] = s["init"].map({k: i for i, k in enumerate(grid.table_labels())})
    s["by_tol"] = ~s["order_spec"].str.isdigit()  # fixed orders first, then per-layer ones (tol:…, layers:…)
    s = s.sort_values(["task", "reference", "by_tol", "order", "init_rank"], ascending=[True, False, True, True, True])
    return s.drop(columns=["init_rank", "by_tol"]).reset_index(drop=True)


def _order_label(spec: str, order: float, reference: bool) -> str:
    if reference:
        return f"{spec} (full N)"
    return spec if spec.isdigit() else f"{spec} (mean r {order:.1f})"


def _count(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


DIVERGED_MARK = "†"
DIVERGED_NOTE = (
    f"{DIVERGED_MARK} training diverged in at least one seed of this cell; that seed reports its best "
    "checkpoint before the divergence (optim.on_divergence: keep_best; runs.csv, column diverged)."
)


def _pm(mean: float, std: float, n: int, n_diverged: int = 0) -> str:
    """``mean ± std (n=k)`` in %; one seed has no std; ``†`` where a seed diverged."""
    spread = "± n/a" if np.isnan(std) else f"± {100 * std:.2f}"
    return f"{100 * mean:.2f} {spread} (n={int(n)})" + (f" {DIVERGED_MARK}" if n_diverged else "")


def _diff_cell(diff: float, low: float, high: float, n: float, significant: bool = False) -> str:
    """``+d [low, high]`` in percentage points (the seed-only t interval); **bold** where ``significant`` (Holm p <
    ALPHA and the seed × item interval excludes 0: ``differences_table``); ``n=1: no CI``."""
    if np.isnan(diff):
        return ""
    if np.isnan(low):
        return f"{100 * diff:+.2f} (n={int(n)}, no CI)"
    text = f"{100 * diff:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
    return f"**{text}**" if significant else text


SIGNIFICANT_NOTE = (
    f"Bold: significant, i.e. the Holm-adjusted p of the paired t test over seeds < {ALPHA} (family: the groups "
    "of config evidence.family; differences.csv, column in_family) and the 95 % seed × test-item bootstrap interval excludes 0 (differences.md)."
)


def _display(summary: pd.DataFrame) -> pd.DataFrame:
    level = int(round(100 * CONFIDENCE))
    labels = grid.table_labels()
    cols = {
        "task": summary["task"],
        "order": [_order_label(*a) for a in zip(summary["order_spec"], summary["order"], summary["reference"])],
        "init": [labels.get(i, i) for i in summary["init"]],
        "test acc. % (mean ± std, n seeds)": [
            _pm(*a) for a in zip(summary["acc_mean"], summary["acc_std"], summary["n_seeds"], summary["n_diverged"])
        ],
        "epochs (total)": [_count(x) for x in summary["total_epochs"]],
        "train time s (total)": ["" if np.isnan(x) else f"{x:.0f}" for x in summary["total_wall_time_s"]],
        "params": [_count(x) for x in summary["params_total"]],
        "SSM params": [_count(x) for x in summary["params_ssm"]],
    }
    for versus in [v for v in grid.versus() if summary[f"diff_vs_{v}"].notna().any()]:  # the baselines the grid ran
        cols[f"vs {labels[versus]} (pp, paired, {level} % CI)"] = [
            _diff_cell(*a[:4], isinstance(a[4], (bool, np.bool_)) and bool(a[4]))  # NaN: no row
            for a in zip(
                *(summary[f"{c}_vs_{versus}"] for c in ("diff", "ci_low", "ci_high", "n_pairs", "significant"))
            )
        ]
    return pd.DataFrame(cols)


def _latex(df: pd.DataFrame, note: str | None = None) -> str:
    """A booktabs tabular of ``df`` (written by hand: pandas' to_latex needs jinja2); ``**x**`` becomes bold,
    ``note`` goes below it."""

    def cell(v) -> str:
        t = str(v)
        bold = len(t) > 4 and t.startswith("**") and t.endswith("**")
        t = t[2:-2] if bold else t
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
            t = t.replace(a, b)
        t = t.replace("±", r"$\pm$").replace(DIVERGED_MARK, r"\dag{}")
        return rf"\textbf{{{t}}}" if bold else t

    lines = [r"\begin{tabular}{" + "l" * 3 + "r" * (len(df.columns) - 3) + "}", r"\toprule"]
    lines.append(" & ".join(cell(c) for c in df.columns) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(cell(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if note:
        lines += ["", r"\par\footnotesize " + cell(note)]
    return "\n".join(lines) + "\n"


def methods_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary side by side: one row per task × order, one column per init (the baselines, then each method
    without and after retraining), cells "mean ± std (n=k)" test accuracy in %, and the row's parameter count."""
    rows, labels = [], grid.table_labels()
    for (task, spec), g in summary.groupby(["task", "order_spec"], sort=False):
        first = g.iloc[0]
        row = {
            "task": task,
            "order": _order_label(spec, first["order"], first["reference"]),
            "params": _count(g["params_total"].mean()),
        }
        for init, m, sd, n, d in zip(g["init"], g["acc_mean"], g["acc_std"], g["n_seeds"], g["n_diverged"]):
            row[labels.get(init, init)] = _pm(m, sd, n, d)
        rows.append(row)
    table = pd.DataFrame(rows)
    columns = ["task", "order", "params"] + [
        label for label in dict.fromkeys(labels.values()) if label in table.columns
    ]
    return table[columns].fillna("")


def _markdown(df: pd.DataFrame, note: str | None = None) -> str:
    md = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    md += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(md + (["", note] if note else [])) + "\n"


def _p_cell(p: float) -> str:
    return "" if np.isnan(p) else (f"{p:.2g}" if p >= 1e-4 else "< 1e-4")


def _interval_cell(low: float, high: float) -> str:
    return "" if np.isnan(low) else f"[{100 * low:+.2f}, {100 * high:+.2f}]"


def differences_display(diffs: pd.DataFrame) -> pd.DataFrame:
    """The differences of ``differences_table`` as shown in differences.md: the primary contrast first (marked),
    then the others in the table's order; differences, intervals in percentage points."""
    level = int(round(100 * CONFIDENCE))
    effect = diffs["power_effect"].iloc[0] if len(diffs) else POWER_EFFECT
    return pd.DataFrame(
        {
            "task": diffs["task"],
            "order": diffs["order_spec"],
            "init": [LABELS.get(i, i) + (" (primary)" if p else "") for i, p in zip(diffs["init"], diffs["primary"])],
            "versus": [LABELS.get(v, v) for v in diffs["versus"]],
            "versus order": [str(v) for v in diffs["versus_order_spec"]],
            "claim": diffs["claim"],
            "params (init / versus)": [
                f"{_count(a)} / {_count(b)}" for a, b in zip(diffs["params_total"], diffs["versus_params_total"])
            ],
            "diff (pp)": ["" if np.isnan(d) else f"{100 * d:+.2f}" for d in diffs["diff"]],
            f"{level} % CI, seeds (t)": [_interval_cell(lo, hi) for lo, hi in zip(diffs["ci_low"], diffs["ci_high"])],
            f"{level} % CI, seeds × items (bootstrap)": [
                _interval_cell(lo, hi) for lo, hi in zip(diffs["boot_low"], diffs["boot_high"])
            ],
            "seeds": [str(int(n)) for n in diffs["n_pairs"]],
            "test items": ["" if np.isnan(n) else str(int(n)) for n in diffs["n_items"]],
            "p": [_p_cell(p) for p in diffs["p"]],
            "p (Holm)": [_p_cell(p) if f else "exploratory" for p, f in zip(diffs["p_holm"], diffs["in_family"])],
            "significant": ["yes" if s else "no" for s in diffs["significant"]],
            f"seeds for {int(round(100 * POWER))} % power at {100 * effect:g} pp": [
                "" if np.isnan(n) else str(int(n)) for n in diffs["seeds_for_power"]
            ],
        }
    )


def differences_note(diffs: pd.DataFrame, primary: dict[str, Any] | None) -> str:
    """What the columns of differences.md mean, and where a declared primary contrast has no row, that."""
    lines = [
        "Differences of test accuracy (init − versus), paired by seed. Seeds (t): the Student-t interval over the "
        f"per-seed differences. Seeds × items: percentile interval of a two-way bootstrap ({BOOTSTRAP_B} "
        f"replicates, generator seed {BOOTSTRAP_SEED}) resampling seeds and test items (one item draw shared by "
        "both arms and every seed); empty where a run has no predictions.npz or fewer than 2 seeds pair. p: paired "
        "t test over seeds; p (Holm): Holm-adjusted over the declared family (config evidence.family: the claim "
        "groups listed there; exploratory: a row outside it, raw p only). Significant: p (Holm) < "
        f"{ALPHA} and the seeds × items interval excludes 0. Seeds for power: a paired t test's seeds for "
        f"{int(round(100 * POWER))} % power at level {ALPHA}, from the observed sd of the per-seed differences."
    ]
    missing = primary_missing(diffs, primary)
    return "\n\n".join(lines + ([f"Warning: {missing}."] if missing else []))


def primary_missing(diffs: pd.DataFrame, primary: dict[str, Any] | None) -> str | None:
    """Where a primary contrast is declared and ``diffs`` has no row of it, a sentence saying so; else None."""
    key = primary_contrast(primary)
    if key is None or diffs["primary"].any():
        return None
    return f"the declared primary contrast ({key[0]} − {key[1]} at order {key[2]}) has no row: its runs are missing"


def write_tables(
    metrics_files: Iterable[str | os.PathLike],
    runs_csv,
    csv_path,
    md_path,
    tex_path,
    methods_md=None,
    differences_csv=None,
    differences_md=None,
    primary: dict[str, Any] | None = None,
    power_effect: float = POWER_EFFECT,
    family: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Write the long-form runs CSV and the summary as CSV, Markdown and LaTeX (each atomically); ``methods_md``:
    also the side-by-side table of ``methods_table`` as Markdown; ``differences_csv`` / ``differences_md``: the
    paired differences in long form (``differences_table``: columns diff, ci_low, ci_high, boot_low, boot_high,
    p, p_holm, significant, seeds_for_power, ...) as CSV / Markdown, the ``primary`` contrast first
    ({method, control, order}; a warning under the tables where it has no row); ``power_effect``: the effect the
    seeds_for_power column plans for (accuracy, 0.02 = 2 points); ``family``: the claim groups of the Holm
    adjustment (``differences_table``; None: every row)."""
    metrics_files = list(metrics_files)
    runs = runs_table(metrics_files)
    diffs = differences_table(runs, primary, power_effect, family=family)
    summary = summary_table(runs, diffs)
    shown = _display(summary)
    notes = [DIVERGED_NOTE] if summary["n_diverged"].any() else []
    if summary.filter(like="significant_vs_").eq(True).any().any():
        notes.append(SIGNIFICANT_NOTE)
    mixed = mixed_provenance(json.loads(Path(f).read_text()) for f in metrics_files)
    if mixed:
        print(f"warning: {mixed}", file=sys.stderr)
        notes.append(f"Warning: {mixed}.")
    missing = primary_missing(diffs, primary)
    if missing:
        print(f"warning: {missing}", file=sys.stderr)
    note = "\n\n".join(notes) or None
    outputs = [
        (runs_csv, runs.to_csv(index=False)),
        (csv_path, summary.to_csv(index=False)),
        (md_path, _markdown(shown, note)),
        (tex_path, _latex(shown, note)),
    ]
    if methods_md is not None:
        outputs.append((methods_md, _markdown(methods_table(summary), note)))
    if differences_csv is not None:
        outputs.append((differences_csv, diffs.to_csv(index=False)))
    if differences_md is not None:
        extra = [n for n in notes if n != SIGNIFICANT_NOTE]
        outputs.append(
            (
                differences_md,
                _markdown(differences_display(diffs), "\n\n".join([differences_note(diffs, primary), *extra])),
            )
        )
    for path, text in outputs:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
    return summary
