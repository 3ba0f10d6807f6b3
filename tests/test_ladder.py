"""The budget ladder and the learning-rate grid (evidence.ladder, evidence.lr_grid): their runs in the catalog
(dssbt.grid: epochs and learning rates against the config's own numbers, x1 and factor 1 are exactly the main grid's
runs, an added multiplier or seed plans only its runs) and their tables (dssbt.ladder) on synthetic files whose
answers are computed here by hand."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from dssbt import grid
from dssbt.config_check import check_config
from dssbt.ladder import chain_point, ladder_differences, ladder_points, ladder_trend, lr_choice, lr_grid_table

ROOT = Path(__file__).resolve().parents[1]
LADDER_KINDS = ["ladder_pretrain", "ladder_reduce", "ladder_retrain", "ladder_equal", "ladder_retrain_no_warmup"]
LR_KINDS = ["lr_retrain", "lr_equal"]


def config(ladder=None, lr_grid=None) -> dict:
    c = yaml.safe_load((ROOT / "config.yaml").read_text())
    if ladder is not None:
        c["evidence"]["ladder"] = ladder
    if lr_grid is not None:
        c["evidence"]["lr_grid"] = lr_grid
    return c


def config_epochs(c: dict, task: str, stage: str) -> int:
    """E_p (stage pretrain) or E_r (retrain) of a task read straight from the config dict: the last of global optim,
    the task's optim, and the stage's global then per-task overrides that sets epochs."""
    ts = c.get("task_settings", {}).get(task, {})
    layers = [c["optim"], ts.get("optim", {})]
    layers += [c.get("pretrain", {}).get("optim", {})] if stage == "pretrain" else []
    layers += [c["retrain"]["optim"], ts.get("retrain", {}).get("optim", {})] if stage == "retrain" else []
    return [layer["epochs"] for layer in layers if "epochs" in layer][-1]


def folders(plan: grid.Plan) -> set[str]:
    return {k.path(f) for k in grid.KINDS.values() for f in plan.runs(k)}


def test_every_ladder_run_has_m_times_the_epochs():
    c = config(ladder={"multipliers": [1, 2, 4], "order": 4, "no_warmup": True})
    c["task_settings"]["image"] = {"retrain": {"optim": {"epochs": 5}}}  # E_r != E_p for one task
    plan = grid.Plan(c)
    expect = {
        "ladder_pretrain": lambda t: config_epochs(c, t, "pretrain"),
        "ladder_retrain": lambda t: config_epochs(c, t, "retrain"),
        "ladder_retrain_no_warmup": lambda t: config_epochs(c, t, "retrain"),
        "ladder_equal": lambda t: config_epochs(c, t, "pretrain") + config_epochs(c, t, "retrain"),
    }
    seen = set()
    for name, base in expect.items():
        for fields in plan.runs(name, twins=True):
            hp = json.loads(plan.run_hparams(grid.KINDS[name], fields))
            assert hp["optim"]["epochs"] == int(fields["mult"]) * base(fields["task"]), (name, fields)
            warmup = 0.0 if name.endswith("no_warmup") else c["optim"]["warmup_epochs"]
            assert hp["optim"]["warmup_epochs"] == warmup
            assert {k: v for k, v in hp["optim"].items() if k not in ("epochs", "warmup_epochs")} == {
                k: v
                for k, v in json.loads(plan.hparams(fields["task"], "train"))["optim"].items()
                if k not in ("epochs", "warmup_epochs")
            }, "nothing but the epochs (and the no-warmup variant's warmup) differs from the main grid's"
            seen.add((name, fields["mult"]))
    assert {m for _, m in seen} == {"1", "2", "4"}
    assert config_epochs(c, "image", "retrain") == 5 and 4 * 5 in {
        json.loads(plan.run_hparams(grid.KINDS["ladder_retrain"], f))["optim"]["epochs"]
        for f in plan.runs("ladder_retrain")
    }


def test_x1_and_factor_1_are_exactly_the_main_grid_runs():
    plan = grid.Plan(
        config(ladder={"multipliers": [1, 2], "order": 4, "no_warmup": True}, lr_grid={"factors": [0.5, 1, 2]})
    )
    K = grid.KINDS
    twins = 0
    for name in LADDER_KINDS + LR_KINDS:
        kind = K[name]
        for fields in plan.runs(kind, twins=True):
            held = kind.at(fields)
            if held is kind:
                assert fields in plan.runs(kind)
                continue
            twins += 1
            assert fields.get("mult", fields.get("factor")) == "1" and fields not in plan.runs(kind)
            assert plan.run_hparams(kind, fields) == plan.run_hparams(held, fields), name
            assert plan.start_args(kind, fields) == plan.start_args(held, fields), name
            assert held.path(fields).startswith(f"results/runs/{fields['task']}/seed{fields['seed']}/")
    # x1 of pretrain, reduce, retrain, equal; factor 1 of retrain and equal; per task and seed (the no-warmup
    # retraining has no twin: the main grid has none)
    assert twins == 6 * len(plan.tasks) * len(plan.seeds)
    # the ladder's x2 starts from its own x2 pretraining; its no-warmup retraining at x1 from the main reduction
    f = {"task": "image", "seed": "0", "mult": "2", "method": "bt", "order": "4"}
    assert plan.start_args(K["ladder_retrain"], f).endswith("results/ladder/image/seed0/x2/bt_r4/reduced.pt")
    assert plan.start_args(K["ladder_reduce"], f).endswith("results/ladder/image/seed0/x2/pretrain/model.pt")
    f1 = f | {"mult": "1"}
    assert plan.start_args(K["ladder_retrain_no_warmup"], f1).endswith("results/runs/image/seed0/bt_r4/reduced.pt")


def test_adding_a_multiplier_or_a_seed_plans_only_its_runs():
    base = folders(grid.Plan(config(ladder={"multipliers": [1, 2], "order": 4}, lr_grid={"factors": [0.5, 1]})))
    more = folders(grid.Plan(config(ladder={"multipliers": [1, 2, 4], "order": 4}, lr_grid={"factors": [0.5, 1]})))
    assert base < more
    added = more - base
    assert added and all("/x4/" in f for f in added)
    # one pretraining, reduction, retraining and equal-budget run per task and seed at x4
    assert len(added) == 4 * 2 * 3
    seeds = grid.Plan(config(lr_grid={"factors": [0.5, 1], "seeds": [0, 1, 2]}))
    seeds_more = grid.Plan(config(lr_grid={"factors": [0.5, 1], "seeds": [0, 1, 2, 7]}))
    added = folders(seeds_more) - folders(seeds)
    assert folders(seeds) < folders(seeds_more)
    assert added == {
        f"results/lr_grid/{t}/seed7/lr0.5/{r}_r4/"
        for t in ("pathfinder", "image")
        for r in ("bt_init", "skew_hippo_equal")
    }
    # the factor-1 runs of seed 7 are the main grid's (retraining and equal budget), which seed 7 reaches through
    # the lr grid's rows, not through the main grid's kinds
    rows = {r["metrics"] for r in seeds_more.lr_rows()} - {r["metrics"] for r in seeds.lr_rows()}
    assert "results/runs/image/seed7/bt_init_r4/metrics.json" in rows
    assert "results/runs/image/seed7/skew_hippo_equal_r4/metrics.json" in rows
    # off: no run of either study
    plain = grid.Plan(config())
    assert not any(plain.runs(k) for k in LADDER_KINDS + LR_KINDS) and not plain.ladder_rows() and not plain.lr_rows()


def test_lr_grid_runs_scale_lr_and_ssm_lr_only():
    c = config(lr_grid={"factors": [0.5, 1, 2], "seeds": [3]})
    plan = grid.Plan(c)
    for name, how in (("lr_retrain", "retrain"), ("lr_equal", "equal_budget")):
        for fields in plan.runs(name, twins=True):
            assert fields["seed"] == "3"
            f = float(fields["factor"])
            hp = json.loads(plan.run_hparams(grid.KINDS[name], fields))["optim"]
            assert hp["lr"] == pytest.approx(f * c["optim"]["lr"]) and hp["ssm_lr"] == pytest.approx(
                f * c["optim"]["ssm_lr"]
            )
            main = json.loads(plan.hparams(fields["task"], how))["optim"]
            assert {k: v for k, v in hp.items() if k not in ("lr", "ssm_lr")} == {
                k: v for k, v in main.items() if k not in ("lr", "ssm_lr")
            }


def test_bad_ladder_order_fails_naming_the_key():
    c = config(ladder={"multipliers": [2], "order": 32})
    with pytest.raises(ValueError, match=r"evidence.ladder.order = 32 is not below N = 32"):
        check_config(c, grid.Plan(c))
    c = config(lr_grid={"factors": [2], "order": 40})
    with pytest.raises(ValueError, match=r"evidence.lr_grid.order = 40"):
        check_config(c, grid.Plan(c))


def test_every_new_folder_parses_back_to_its_kind():
    plan = grid.Plan(config(ladder={"multipliers": [2], "order": 4, "no_warmup": True}, lr_grid={"factors": [0.5]}))
    for name in LADDER_KINDS + LR_KINDS:
        for fields in plan.runs(name):
            run = grid.KINDS[name].folder.format(**fields)
            assert grid.parse(run) == (grid.KINDS[name], fields)


# ----- tables -------------------------------------------------------------------------------------------------


def metrics(path: Path, test: float, val: float, epochs: int, wall: float, batch_size: int = 50, cap: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    optim = {"batch_size": batch_size} | ({"max_steps_per_epoch": cap} if cap else {})
    m = {
        "accuracy": {"test": test, "val": val},
        "epochs_run": epochs,
        "wall_time_s": wall,
        "hparams": {"model": {}, "optim": optim},
    }
    path.write_text(json.dumps(m))
    return str(path)


def test_chain_point_adds_epochs_steps_and_wall_time(tmp_path):
    # 1000 training examples: 20 steps per epoch at batch 50, 8 at batch 128 (ceil 7.8), capped at 5
    chain = [
        metrics(tmp_path / "pre.json", 0.9, 0.9, 4, 10.0),
        metrics(tmp_path / "red.json", 0.3, 0.3, 0, 1.5),
        metrics(tmp_path / "ret.json", 0.8, 0.7, 3, 6.0, batch_size=128),
    ]
    p = chain_point(chain, 1000)
    assert (p["epochs"], p["steps"], p["wall_time_s"]) == (7, 4 * 20 + 3 * 8, 17.5)
    assert (p["test_accuracy"], p["val_accuracy"], p["file"]) == (0.8, 0.7, chain[-1])
    capped = chain_point([metrics(tmp_path / "cap.json", 0.5, 0.5, 2, 1.0, cap=5)], 1000)
    assert capped["steps"] == 10


def ladder_fixture(tmp_path: Path, acc: dict[tuple[int, int, str], float], n_items: int = 20):
    """Metrics and predictions of a ladder: acc[(seed, mult, arm)] = test accuracy (a multiple of 1/n_items; the
    first k items right). BT-init chains are pretraining (2m epochs), reduction, retraining (m epochs)."""
    rows = []
    for (seed, mult, arm), a in acc.items():
        d = tmp_path / f"s{seed}/x{mult}"
        last = metrics(d / arm / "metrics.json", a, a, 3 * mult if arm == "skew_hippo_equal" else mult, 1.0)
        k = round(a * n_items)
        labels = np.zeros(n_items, dtype=np.uint8)
        np.savez(d / arm / "predictions.npz", test=(np.arange(n_items) >= k).astype(np.uint8), test_labels=labels)
        chain = [last]
        if arm != "skew_hippo_equal":
            chain = [metrics(d / "pre.json", 0.9, 0.9, 2 * mult, 2.0), metrics(d / "red.json", 0.1, 0.1, 0, 0.5), last]
        rows.append({"task": "image", "seed": seed, "mult": mult, "arm": arm, "chain": chain})
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"label_counts": {"train": [60, 40]}}))
    return ladder_points(rows, {"image": meta})


def test_ladder_points_differences_and_trend(tmp_path):
    acc = {}
    lead = {0: (0.4, -0.1), 1: (0.3, -0.05), 2: (0.5, -0.2)}  # seed -> (lead at x1, change per doubling)
    for seed, (a, b) in lead.items():
        for mult in (1, 2, 4):
            acc[(seed, mult, "skew_hippo_equal")] = 0.3
            acc[(seed, mult, "bt_init")] = round(0.3 + a + b * math.log2(mult), 10)
    points = ladder_fixture(tmp_path, acc)
    bt = points[points["arm"] == "bt_init"].set_index(["seed", "mult"])
    eq = points[points["arm"] == "skew_hippo_equal"].set_index(["seed", "mult"])
    assert bt.loc[(0, 4), "epochs"] == 8 + 4 and eq.loc[(0, 4), "epochs"] == 12
    assert bt.loc[(0, 2), "steps"] == 6 * 2  # 100 examples, batch 50: 2 steps per epoch
    assert bt.loc[(1, 2), "wall_time_s"] == 3.5
    diffs = ladder_differences(points, n_boot=200).set_index("mult")
    for mult in (1, 2, 4):
        d = [lead[s][0] + lead[s][1] * math.log2(mult) for s in lead]
        assert diffs.loc[mult, "diff"] == pytest.approx(np.mean(d))
        t = stats.t.ppf(0.975, 2) * np.std(d, ddof=1) / math.sqrt(3)
        assert (diffs.loc[mult, "ci_low"], diffs.loc[mult, "ci_high"]) == pytest.approx(
            (np.mean(d) - t, np.mean(d) + t)
        )
        assert diffs.loc[mult, "n_items"] == 20 and diffs.loc[mult, "boot_low"] <= diffs.loc[mult, "boot_high"]
    trend = ladder_trend(points).iloc[0]
    slopes = [b for _, b in lead.values()]
    half = stats.t.ppf(0.975, 2) * np.std(slopes, ddof=1) / math.sqrt(3)
    assert trend["slope"] == pytest.approx(np.mean(slopes))
    assert (trend["low"], trend["high"]) == pytest.approx((np.mean(slopes) - half, np.mean(slopes) + half))
    assert trend["n_seeds"] == 3 and trend["multipliers"] == 3


def test_lr_choice_is_argmax_of_mean_validation_with_ties_to_the_smaller_factor(tmp_path):
    val = {  # (task, arm, factor) -> validation accuracy per seed
        ("image", "bt_init", 0.5): [0.70, 0.72],
        ("image", "bt_init", 1.0): [0.80, 0.74],  # mean 0.77: the best
        ("image", "bt_init", 2.0): [0.75, 0.77],  # 0.76
        ("image", "skew_hippo_equal", 0.5): [0.60, 0.62],  # 0.61: tie with 2.0 -> 0.5
        ("image", "skew_hippo_equal", 1.0): [0.55, 0.57],
        ("image", "skew_hippo_equal", 2.0): [0.62, 0.60],
        ("pathfinder", "bt_init", 0.5): [0.5, 0.5],
        ("pathfinder", "bt_init", 2.0): [0.9, 0.5],  # 0.7: best although one seed is at chance
    }
    rows = []
    for (task, arm, f), accs in val.items():
        for seed, a in enumerate(accs):
            m = tmp_path / f"{task}_{arm}_{f}_{seed}.json"
            m.write_text(json.dumps({"accuracy": {"val": a, "test": 0.0}}))
            rows.append({"task": task, "arm": arm, "factor": f"{f:g}", "seed": seed, "metrics": str(m)})
    table = lr_grid_table(rows)
    assert len(table) == len(val) and set(table["n"]) == {2}
    for (task, arm, f), accs in val.items():
        got = table[(table["task"] == task) & (table["arm"] == arm) & (table["factor"] == f)]["val_mean"].item()
        assert got == pytest.approx(np.mean(accs))
    choice = {(r.task, r.arm): r.factor for r in lr_choice(table).itertuples()}
    assert choice == {("image", "bt_init"): 1.0, ("image", "skew_hippo_equal"): 0.5, ("pathfinder", "bt_init"): 2.0}


def test_lr_choice_on_a_fixed_table_without_files():
    table = pd.DataFrame(
        {
            "task": ["t"] * 3,
            "arm": ["a"] * 3,
            "factor": [2.0, 0.5, 1.0],
            "val_mean": [0.5, 0.5, 0.4],
            "n": [3, 3, 3],
        }
    )
    assert lr_choice(table)["factor"].tolist() == [0.5]
    table2 = copy.deepcopy(table)
    table2.loc[0, "val_mean"] = 0.5 + 1e-9  # a real (not rounding) difference: the larger factor wins
    assert lr_choice(table2)["factor"].tolist() == [2.0]


def test_equal_budget_learning_rates_of_one_task_reach_only_its_equal_budget_runs():
    """The lr grid's choice for the equal-budget arm goes into task_settings.<task>.equal_budget.optim: it sets that
    task's equal-budget lr and ssm_lr, and nothing else of any run."""
    c = config(lr_grid={"factors": [0.5, 1]})
    before = grid.Plan(copy.deepcopy(c))
    c["task_settings"]["image"] = {"equal_budget": {"optim": {"lr": 0.02, "ssm_lr": 0.004}}}
    after = grid.Plan(c)
    changed = {
        (k.name, k.path(f))
        for k in grid.KINDS.values()
        for f in after.runs(k)
        if after.run_hparams(k, f) != before.run_hparams(k, f)
    }
    assert changed == {
        ("train_equal_budget", "results/runs/image/seed0/skew_hippo_equal_r4/"),
        ("train_equal_budget", "results/runs/image/seed1/skew_hippo_equal_r4/"),
        ("train_equal_budget", "results/runs/image/seed2/skew_hippo_equal_r4/"),
    } | {("lr_equal", f"results/lr_grid/image/seed{s}/lr0.5/skew_hippo_equal_r4/") for s in range(3)}
    hp = json.loads(after.hparams("image", "equal_budget"))["optim"]
    assert (hp["lr"], hp["ssm_lr"]) == (0.02, 0.004)
    assert hp["epochs"] == json.loads(before.hparams("image", "equal_budget"))["optim"]["epochs"]
    half = json.loads(after.run_hparams(grid.KINDS["lr_equal"], {"task": "image", "seed": "0", "factor": "0.5"}))
    assert half["optim"]["lr"] == pytest.approx(0.01) and half["optim"]["ssm_lr"] == pytest.approx(0.002)
