"""The catalog of run kinds (dssbt.grid): its folders agree with what a job writes (dssbt.runs), every folder parses
back to its kind, and a control added as ONE entry (here registered by the test, no file edited) gets exactly its
jobs scheduled and its rows in the tables."""

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from dssbt import grid
from dssbt.aggregate import write_tables
from dssbt.runs import describe_run, table_init

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
EXAMPLE = {
    "task": "image",
    "seed": "0",
    "order": "4",
    "method": "bt",
    "epoch": "2",
    "variant": "hsvreg0.01",
    "keep": "0.5",
    "mult": "2",
    "factor": "0.5",
    "knob": "lr0.5",
    "rseed": "1",
}


def test_every_folder_parses_back_to_its_kind():
    for kind in grid.KINDS.values():
        fields = {k: v for k, v in EXAMPLE.items() if k in kind.fields}
        run = kind.folder.format(**fields)
        assert grid.parse(run) == (kind, fields), kind.name
        assert re.fullmatch(grid.folder_constraint(kind.command), run)
        other = [c for c in grid.COMMANDS if c != kind.command][0]
        assert not re.fullmatch(grid.folder_constraint(other), run), (kind.name, "matched by the other rule")
    with pytest.raises(ValueError, match="no run kind"):
        grid.parse("runs/image/seed0/skew_hippo_half_r4")


def test_main_grid_folders_are_what_a_job_writes_in_its_metrics():
    """The run name a job records (runs.describe_run, from its stage and method) is its kind's folder, and the table
    key that runs.table_init derives from it is the kind's."""
    for kind in grid.KINDS.values():
        if not kind.table_key:
            continue
        fields = {k: v for k, v in EXAMPLE.items() if k in kind.fields}
        method = {"baseline": kind.table_key, "pretrain": "skew_hippo", "continue": "full"}.get(kind.stage, "bt")
        d = describe_run(kind.stage, method, fields.get("order"))
        assert kind.path(fields) == f"results/runs/image/seed0/{d['run']}/", kind.name
        assert table_init(d) == kind.table_key.format(method="bt"), kind.name


def test_plan_hyper_parameters_and_starts():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    plan = grid.Plan(config)
    K = grid.KINDS
    hp = {h: json.loads(plan.hparams("image", h))["optim"]["epochs"] for h in ("pretrain", "train", "retrain")}
    equal = json.loads(plan.run_hparams(K["train_equal_budget"], EXAMPLE))["optim"]["epochs"]
    assert equal == hp["pretrain"] + hp["retrain"]
    assert plan.start_args(K["pretrain"], EXAMPLE) == "--init skew_hippo"
    assert plan.start_args(K["snapshot"], EXAMPLE) == "--init skew_hippo --stop-after 2"
    assert (
        plan.start_args(K["retrain"], EXAMPLE)
        == "--init from_reduced --model results/runs/image/seed0/bt_r4/reduced.pt"
    )
    assert plan.start_args(K["continue_full"], EXAMPLE) == (
        "--init from_pretrained --model results/runs/image/seed0/pretrain/model.pt"
    )
    assert plan.parent_file(K["compress_reduce"], EXAMPLE | {"variant": "plain"}).endswith(
        "runs/image/seed0/pretrain/model.pt"
    )
    assert plan.parent_file(K["compress_reduce"], EXAMPLE).endswith("compress/image/seed0/hsvreg0.01/pretrain/model.pt")
    # the default: equal budget and transplant on, the plain baseline off
    assert len(plan.runs("train_equal_budget")) == 6 and plan.runs("train_baseline") == []
    assert [f["method"] for f in plan.runs("retrain")][:2] == ["bt", "transplant"]


# ----- a control added as one catalog entry -----------------------------------------------------------------------

# The entry, as the test registers it: the paper's Skew-HiPPO baseline trained for half its epochs. Everything else
# (its jobs, hyper-parameters, resources, table rows and label) follows from the catalog.
TOY = """
import json

from dssbt import grid


def half_epochs(plan, task, fields):
    hp = json.loads(plan.hparams(task, "train"))
    hp["optim"]["epochs"] = max(1, hp["optim"]["epochs"] // 2)
    return json.dumps(hp, sort_keys=True)


TOY_KIND = grid.RunKind(
    "train_half_budget",
    "train",
    "baseline",
    grid.MAIN + "skew_hippo_half_r{order}",
    hparams=half_epochs,
    switch="controls",
    control="skew_hippo_half",
    axes={"order": "orders"},
    run_args="--method skew_hippo_half",
    table_key="skew_hippo_half",
    label="Skew-HiPPO, half budget",
    rank=1,
)
"""


@pytest.fixture
def toy(monkeypatch):
    """The toy entry registered in this process (undone after the test)."""
    space: dict = {}
    exec(TOY, space)
    monkeypatch.setitem(grid.KINDS, "train_half_budget", space["TOY_KIND"])
    return space["TOY_KIND"]


def test_a_control_is_one_catalog_entry_jobs(toy, tmp_path):
    """A workflow whose Snakefile registers the entry, then includes the real one: config controls may list the new
    control, which schedules exactly one training job per task, seed and order, and the tables read them."""
    from test_workflow import TINY, copy_workflow, job_counts, snakemake

    wf = copy_workflow(tmp_path)
    shutil.copy(TINY, wf / "tiny.yaml")
    # (the target first: --configfile takes every value after it; a wrapper Snakefile has no default target)
    (wf / "Toy.smk").write_text(TOY + '\ngrid.register(TOY_KIND)\n\n\ninclude: "Snakefile"\n')
    (wf / "half.yaml").write_text("controls: [skew_hippo, skew_hippo_equal, skew_hippo_half]\n")
    base = job_counts(wf, "all", "-s", "Toy.smk", "--configfile", "tiny.yaml")
    assert job_counts(wf, "all", "-s", "Toy.smk", "--configfile", "tiny.yaml", "half.yaml") == base | {
        "train_half_budget": 2
    }
    out = snakemake(wf, "baseline_all", "-n", "-p", "-s", "Toy.smk", "--configfile", "tiny.yaml", "half.yaml").stdout
    half = [line for line in out.splitlines() if "skew_hippo_half_r2 --threads" in line]
    assert len(half) == 2 and all("--method skew_hippo_half --order 2" in line for line in half), out[-3000:]
    assert all('"epochs": 1' in line for line in half)  # tiny: 1 epoch // 2, at least 1
    p = snakemake(wf, "tables", "-n", "-s", "Toy.smk", "--configfile", "tiny.yaml", "half.yaml")
    aggregate = p.stdout.split("\nrule aggregate:")[1].splitlines()[1]  # its input line
    assert aggregate.startswith("    input:") and aggregate.count("skew_hippo_half_r2/metrics.json") == 2, aggregate
    # without the entry the same config is an error naming the known controls
    p = snakemake(wf, "-n", "--configfile", "tiny.yaml", "half.yaml", check=False)
    assert p.returncode != 0 and "'skew_hippo_half' is not one of" in p.stdout + p.stderr


def test_a_control_is_one_catalog_entry_tables(toy, tmp_path):
    """The tables of runs that include the new control: its rows under its label, compared with the baselines."""
    from test_aggregate import RUN, STAGE, metrics

    STAGE_TOY = {**STAGE, "skew_hippo_half": ("baseline", "skew_hippo_half")}
    RUN_TOY = {**RUN, "skew_hippo_half": "skew_hippo_half_r{r}"}
    files = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr("test_aggregate.STAGE", STAGE_TOY)
        m.setattr("test_aggregate.RUN", RUN_TOY)
        for seed, shift in ((0, 0.0), (1, 0.02)):
            for kind, acc in (("pretrain", 0.9), ("skew_hippo", 0.5), ("skew_hippo_half", 0.4), ("bt_init", 0.8)):
                files.append(
                    metrics(tmp_path / "runs", kind, "image", seed, 8 if kind == "pretrain" else 2, acc + shift)
                )
    out = tmp_path / "tables"
    summary = write_tables(files, out / "runs.csv", out / "acc.csv", out / "acc.md", out / "acc.tex", out / "m.md")
    row = summary[summary["init"] == "skew_hippo_half"].iloc[0]
    assert row["n_seeds"] == 2 and row["acc_mean"] == pytest.approx(0.41)
    assert row["diff_vs_skew_hippo"] == pytest.approx(-0.1)
    md = (out / "acc.md").read_text()
    assert "| Skew-HiPPO, half budget |" in md
    # table order: the catalog's (rank 1: beside the plain baseline, before the retrained methods)
    order = list(summary[summary["order_spec"] == "2"]["init"])
    assert order == ["skew_hippo", "skew_hippo_half", "bt_init"], order
    assert "Skew-HiPPO, half budget" in (out / "m.md").read_text().splitlines()[0]


def test_importing_the_catalog_imports_no_torch():
    p = subprocess.run(
        [sys.executable, "-c", "import sys, dssbt.grid; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert p.stdout.strip() == "False"


DESIGN = {"knob": "lr_factor", "values": [0.25, 1.0, 0.5], "seeds": [3, 4], "rseeds": [0, 7], "order": 8}


def test_correlation_design_schedules_full_length_pretrainings_and_retraining_seeds():
    """Per task: seeds x values pretrainings (the study's own seeds, not config seeds), each with the task's full
    pretraining epochs and its learning rates times the factor (read here from the config file itself); one reduction
    each; one retraining per rseed, started from that reduction, with the plain retraining hyper-parameters."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text()) | {"correlation_study": DESIGN}
    plan = grid.Plan(config)
    K = grid.KINDS
    pre, red, ret = (plan.runs(k) for k in ("corr_pretrain", "corr_reduce", "corr_retrain"))
    tasks = config["tasks"]
    assert len(pre) == len(red) == len(tasks) * 2 * 3 and len(ret) == 2 * len(pre)  # k = 6 per task, 2 rseeds
    assert {(f["task"], f["seed"], f["knob"]) for f in pre} == {
        (t, s, k) for t in tasks for s in ("3", "4") for k in ("lr0.25", "lr1", "lr0.5")
    }
    for f in pre:
        hp = json.loads(plan.run_hparams(K["corr_pretrain"], f))
        own = config["task_settings"].get(f["task"], {}).get("optim", {})
        assert hp["optim"]["epochs"] == own.get("epochs", config["optim"]["epochs"])  # the full pretraining
        factor = float(f["knob"][2:])
        assert hp["optim"]["lr"] == pytest.approx(config["optim"]["lr"] * factor)
        assert hp["optim"]["ssm_lr"] == pytest.approx(config["optim"]["ssm_lr"] * factor)
        assert hp["optim"]["weight_decay"] == config["optim"]["weight_decay"]
        assert plan.start_args(K["corr_pretrain"], f) == "--init skew_hippo"
    for f in ret:
        assert K["corr_retrain"].path(f) == (
            f"results/corr/{f['task']}/seed{f['seed']}/{f['knob']}/bt_init_r8_s{f['rseed']}/"
        )
        assert (
            plan.parent_file(K["corr_retrain"], f)
            == f"results/corr/{f['task']}/seed{f['seed']}/{f['knob']}/bt_r8/reduced.pt"
        )
        assert plan.run_hparams(K["corr_retrain"], f) == plan.hparams(f["task"], "retrain")
    assert {f["rseed"] for f in ret} == {"0", "7"}
    for knob, value, where in (
        ("weight_decay", 0.1, ("optim", "weight_decay")),
        ("dropout", 0.2, ("model", "dropout")),
    ):
        cfg = config | {"correlation_study": DESIGN | {"knob": knob, "values": [value]}}
        p = grid.Plan(cfg)
        (f, *_) = p.runs("corr_pretrain")
        hp = json.loads(p.run_hparams(K["corr_pretrain"], f))
        assert hp[where[0]][where[1]] == value and hp["optim"]["lr"] == config["optim"]["lr"]
    assert grid.Plan(config | {"correlation_study": None}).runs("corr_retrain") == []
