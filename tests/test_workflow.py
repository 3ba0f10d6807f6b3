"""The Snakemake workflow: lint, format, config validation, dry-run job counts, and a tiny real run followed by
config edits that must schedule exactly the invalidated jobs."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dssbt.reduction.registry import REDUCTIONS

# Under pytest-xdist (.ci/run) this module's tests stay on one worker, so its module fixtures run once. Slow: they
# run Snakemake (dry runs of seconds each, a tiny real run of minutes); the fast lane (-m "not slow") leaves them out.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_workflow")]

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(__file__).parent / "workflow" / "tiny.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# Jobs run `python -m dssbt`: put this interpreter first on PATH, as an activated venv would.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def copy_workflow(dest: Path) -> Path:
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, dest / name)
    for name in ("workflow", "profiles"):
        shutil.copytree(ROOT / name, dest / name)
    return dest


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, env=ENV)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def job_counts(cwd: Path, *args: str) -> dict[str, int]:
    """Jobs per rule that a dry run schedules, without the target rule 'all'; a job of the rules train and reduce
    counts under its run kind (dssbt.grid: pretrain, train_baseline, retrain, reduce_snapshot, ...)."""
    from dssbt import grid

    out = snakemake(cwd, "-n", *args).stdout
    if "Nothing to be done" in out:
        return {}
    counts = {}
    for block in out.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0].strip()
        run = re.search(r"^ +wildcards: (?:.*, )?run=([^,\s]+)", block, re.M)
        name = grid.parse(run.group(1))[0].name if rule in grid.COMMANDS and run else rule
        counts[name] = counts.get(name, 0) + 1
    counts.pop("all", None)
    assert sum(counts.values()) == sum(rule_counts(out).values()), "every scheduled job has its block"
    return counts


def rule_counts(out: str) -> dict[str, int]:
    """Jobs per rule of a dry run's output (its 'Job stats' table), without the target rule 'all'."""
    table = out[out.index("Job stats:") :].splitlines()[3:]
    counts = {}
    for line in table:
        if line.startswith("total"):
            break
        rule, n = line.split()
        counts[rule] = int(n)
    counts.pop("all", None)
    return counts


def test_lint_is_clean():
    p = snakemake(ROOT, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in p.stdout + p.stderr


def rule_names() -> set[str]:
    """Every rule of the workflow (the LRA preset: its data rules include extract_lra)."""
    out = snakemake(ROOT, "--list-rules", "--configfile", "workflow/presets/lra.yaml").stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_every_rule_has_its_resource_section_honoured(tmp_path):
    """resources.<name> applies to exactly the jobs of that run kind (dssbt.grid; rules train and reduce) or of that
    rule: give every kind and every other rule its own mem_mb, read each job's in a dry run."""
    import yaml

    from dssbt import grid

    rules = rule_names() - {
        "all",
        "data_all",
        "pretrain_all",
        "baseline_all",
        "reduce_all",
        "retrain_all",
        "tables",
        "deploy",
        "compress",
        "ladder",
        "lr_grid",
    }
    assert set(grid.COMMANDS) <= rules
    sections = (rules - set(grid.COMMANDS)) | set(grid.KINDS)
    wf = copy_workflow(tmp_path)
    mem = {name: 1000 + i for i, name in enumerate(sorted(sections))}
    edit = {
        "resources": {
            "default": {"mem_mb": 1, "runtime": 10},
            "train": {"mem_mb": 2, "runtime": 30},
            **{name: {"mem_mb": m} for name, m in mem.items()},
        },
        "orders": [2, "tol:0.1"],
        "data": {"listops": {"source": "lra"}},
        "deploy": {"enabled": True},
        "controls": ["skew_hippo", "skew_hippo_equal", "full_continued", "transplant"],
        "correlation": {"epochs": [1], "order": 2},
        "correlation_study": {
            "knob": "lr_factor",
            "values": [0.5, 1.0, 2.0],
            "seeds": [0],
            "rseeds": [0, 1],
            "order": 2,
        },
        # the evidence studies' kinds and tables have jobs only where switched on
        "evidence": {
            "ladder": {"multipliers": [1, 2], "order": 2, "no_warmup": True},
            "lr_grid": {"factors": [0.5, 1], "seeds": [0], "order": 2},
        },
        "optim": {"epochs": 2},
        # two methods, one (last) with its own budget allocation: the rule compress_orders_allocated has jobs
        "compressibility": {"keep": [0.5], "hsv_reg": [0.01], "reduce_during_epochs": [1], "method": ["bt", "last"]},
        "task_settings": {"listops": {"optim": {"epochs": 2}}},
    }
    (wf / "edit.yaml").write_text(yaml.safe_dump(edit))
    out = snakemake(wf, "-n", "--configfile", str(TINY), "edit.yaml").stdout
    seen = {}
    for block in out.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0].strip()
        run = re.search(r"^ +wildcards: (?:.*, )?run=([^,\s]+)", block, re.M)
        name = grid.parse(run.group(1))[0].name if rule in grid.COMMANDS and run else rule
        m = re.search(r"resources: .*?mem_mb=(\d+)", block)
        if name in mem and m:
            seen.setdefault(name, set()).add(int(m.group(1)))
    assert seen == {name: {m} for name, m in mem.items()}, seen
    (wf / "bad.yaml").write_text("resources: {pretrian: {mem_mb: 1}}\n")
    p = snakemake(wf, "-n", "--configfile", str(TINY), "bad.yaml", check=False)
    assert p.returncode != 0 and "resources: 'pretrian' is not one of" in p.stdout + p.stderr


def test_schema_leaves_methods_and_controls_to_the_catalog():
    """methods, controls and the resources sections are checked against the registry and the catalog (dssbt.grid)
    at parse time, not listed in the schema: adding a method or a control is one entry, not an edit here too."""
    import yaml

    from dssbt import grid
    from dssbt.reduction.registry import CONTROL_METHODS, METHODS, REDUCTIONS

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    props = schema["properties"]
    assert "enum" not in props["methods"]["items"] and "enum" not in props["controls"]["items"]
    assert "propertyNames" not in props["resources"]
    assert grid.controls() == ["skew_hippo_equal", "skew_hippo", "full_continued", *CONTROL_METHODS]
    assert set(REDUCTIONS) | set(CONTROL_METHODS) == set(METHODS) and CONTROL_METHODS
    assert set(props["reduction"]["properties"]) == {"route"} | {name for name, m in METHODS.items() if m.options}


def test_plain_install_leaves_the_slurm_plugin_out_and_a_dry_run_never_imports_it(tmp_path):
    """`pip install -e .` does not pull snakemake-executor-plugin-slurm (extra 'slurm'), and a local dry run works
    without it: run snakemake in an interpreter that sees every installed package except the plugin."""
    from importlib.metadata import requires

    sys.path.insert(0, str(ROOT / "bench"))
    from plan_scale import without_slurm_plugin  # the plan-scale benchmark runs its dry runs this way too

    slurm = [r for r in requires("dssbt") if r.startswith("snakemake-executor-plugin-slurm")]
    assert slurm and all("extra ==" in r for r in slurm), slurm
    (tmp_path / "wf").mkdir()
    wf = copy_workflow(tmp_path / "wf")

    def dry_run(env):
        p = subprocess.run(
            [sys.executable, *env.pop("flags"), "-X", "importtime", "-m", "snakemake", "-n"],
            cwd=wf,
            capture_output=True,
            text=True,
            env=env,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        return re.search(r"\| +snakemake_executor_plugin_slurm\b", p.stderr) is not None

    plain = {**ENV, "flags": ["-S"], "PYTHONPATH": without_slurm_plugin(tmp_path)["PYTHONPATH"]}
    assert not dry_run(plain)
    # the same probe sees the plugin imported where it is installed (this environment): the check can fail
    assert dry_run({**ENV, "flags": []})


def test_snakefmt_check_passes():
    p = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"], cwd=ROOT, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_default_config_dry_run_job_counts(tmp_path):
    wf = copy_workflow(tmp_path)
    # 2 tasks x 3 seeds x 1 order (+ 1 pretraining per task and seed); the controls at every order: equal budget
    # (its own rule) and transplant (reduce + retrain, beside bt); the paper's plain baseline only where listed
    assert job_counts(wf) == {
        "generate": 2,
        "prepare": 2,
        "pretrain": 6,
        "train_equal_budget": 6,
        "reduce": 12,
        "retrain": 12,
        "aggregate": 1,
        "plot": 1,
    }
    (wf / "paper.yaml").write_text("controls: [skew_hippo, skew_hippo_equal, transplant]\n")
    assert job_counts(wf, "--configfile", "config.yaml", "paper.yaml") == job_counts(wf) | {"train_baseline": 6}


def test_correlation_study_adds_only_its_jobs(tmp_path):
    """With config correlation, one snapshot, reduction and retraining per task, seed and snapshot epoch, and the
    correlation job; the main grid is unchanged."""
    wf = copy_workflow(tmp_path)
    (wf / "corr.yaml").write_text("correlation: {epochs: [1, 2], order: 8}\n")
    main = job_counts(wf)
    expected = main | {"snapshot": 12, "reduce_snapshot": 12, "retrain_snapshot": 12, "correlation": 1}  # 2x3x2
    # the full pretraining is a point of the study too: reduced and retrained at order 8, not among the default's
    # orders (4), so one more reduce and retrain per task and seed
    expected |= {"reduce": main["reduce"] + 6, "retrain": main["retrain"] + 6}
    assert job_counts(wf, "--configfile", "config.yaml", "corr.yaml") == expected


def test_correlation_study_runs_end_to_end(tmp_path):
    """One task, one seed, pretraining of 2 epochs: the snapshot after epoch 1 and the full pretraining, each
    reduced and retrained; the snapshot is the pretraining's first epoch; points and coefficients written."""
    import json

    import pandas as pd

    wf = copy_workflow(tmp_path)
    shutil.copy(TINY, wf / "tiny.yaml")
    (wf / "corr.yaml").write_text(
        "tasks: [image]\ncontrols: []\noptim: {epochs: 2}\ncorrelation: {epochs: [1], order: 2}\n"
    )
    snakemake(wf, "--cores", "2", "--configfile", "tiny.yaml", "corr.yaml", "--", "results/tables/correlation.csv")
    run = wf / "results/runs/image/seed0"
    snap = json.loads((run / "pretrain_e1/metrics.json").read_text())
    assert (snap["stage"], snap["run"], snap["epochs_run"]) == ("snapshot", "pretrain_e1", 1)
    assert (run / "pretrain_e1/bt_init_r2/metrics.json").exists()
    pre, full = (pd.read_csv(run / f"{r}/history.csv") for r in ("pretrain_e1", "pretrain"))
    pd.testing.assert_frame_equal(pre.drop(columns="seconds"), full.drop(columns="seconds").iloc[:2])
    points = pd.read_csv(wf / "results/tables/correlation_points.csv")
    assert list(points["pretrain_epochs"]) == [1, 2]
    assert (wf / "results/plots/correlation.png").stat().st_size > 0
    assert list(pd.read_csv(wf / "results/tables/correlation.csv")["task"]) == ["image"]


def test_correlation_preset_schedules_full_length_pretrainings_and_retraining_seeds(tmp_path):
    """The preset's target correlation_design: per task 5 seeds x 3 learning-rate factors = 15 pretrainings (k >= 10),
    each reduced once and retrained once per retraining seed (2); every pretraining runs the task's full pretraining
    epochs (read from config.yaml here) with its learning rates times the factor, every retraining gets --seed rseed;
    nothing of the main grid runs."""
    import yaml

    wf = copy_workflow(tmp_path)
    args = ("--configfile", "workflow/presets/correlation.yaml", "--", "correlation_design")
    assert job_counts(wf, *args) == {
        "generate": 2,
        "prepare": 2,
        "corr_pretrain": 30,
        "corr_reduce": 30,
        "corr_retrain": 60,
        "correlation_design": 1,
    }
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    out = snakemake(wf, "-n", *args).stdout
    seen = {"pretrain": set(), "retrain": set()}
    for block in out.split("\nrule train:")[1:]:
        run = re.search(r"wildcards: run=(\S+)", block).group(1)
        command = re.search(r"^Shell command: (.*)$", block, re.M).group(1)
        hp = json.loads(re.search(r"--hparams '([^']*)'", command).group(1))
        seed = int(re.search(r"--seed (\d+)", command).group(1))
        m = re.fullmatch(r"corr/(\w+)/seed(\d)/lr([0-9.]+)/(pretrain|bt_init_r8_s(\d))", run)
        task, pseed, factor, what, rseed = m.groups()
        own = config["task_settings"].get(task, {}).get("optim", {}).get("epochs", config["optim"]["epochs"])
        assert hp["optim"]["epochs"] == own, run  # full length, whatever the knob
        if what == "pretrain":
            assert seed == int(pseed) and "--init skew_hippo" in command
            assert hp["optim"]["lr"] == pytest.approx(config["optim"]["lr"] * float(factor))
            assert hp["optim"]["ssm_lr"] == pytest.approx(config["optim"]["ssm_lr"] * float(factor))
            seen["pretrain"].add((task, pseed, factor))
        else:
            assert (
                seed == int(rseed) and f"--model results/corr/{task}/seed{pseed}/lr{factor}/bt_r8/reduced.pt" in command
            )
            assert (hp["optim"]["lr"], hp["optim"]["ssm_lr"]) == (config["optim"]["lr"], config["optim"]["ssm_lr"])
            seen["retrain"].add((task, pseed, factor, rseed))
    assert len(seen["pretrain"]) == 30 and len(seen["retrain"]) == 60


def test_correlation_design_runs_end_to_end(tmp_path):
    """One task, 3 pretrainings (one seed x 3 factors) of the tiny model, each reduced to r = 2 and retrained with 2
    retraining seeds: the table has x from the pretrainings' validation accuracy, 6 points, and the plot exists."""
    import pandas as pd

    wf = copy_workflow(tmp_path)
    shutil.copy(TINY, wf / "tiny.yaml")
    (wf / "corr.yaml").write_text(
        "tasks: [image]\ncontrols: []\ncorrelation_study: "
        "{knob: lr_factor, values: [0.1, 1.0, 3.0], seeds: [0], rseeds: [0, 1], order: 2, n_resamples: 200}\n"
    )
    snakemake(wf, "--cores", "2", "--configfile", "tiny.yaml", "corr.yaml", "--", "correlation_design")
    points = pd.read_csv(wf / "results/tables/correlation_design_points.csv")
    assert len(points) == 6 and sorted(points["rseed"].unique()) == [0, 1]
    for _, p in points.iterrows():
        pre = json.loads((wf / f"results/corr/image/seed0/{p['knob']}/pretrain/metrics.json").read_text())
        ret = json.loads(
            (wf / f"results/corr/image/seed0/{p['knob']}/bt_init_r2_s{p['rseed']}/metrics.json").read_text()
        )
        assert (p["pretrained_val"], p["retrained_test"]) == (pre["accuracy"]["val"], ret["accuracy"]["test"])
        assert ret["seed"] == p["rseed"]
    table = pd.read_csv(wf / "results/tables/correlation_design.csv")
    assert list(table["task"]) == ["image"] and table.loc[0, "pretrainings"] == 3
    assert (wf / "results/plots/correlation_design.png").stat().st_size > 0


def test_lra_preset_dry_run_needs_no_data(tmp_path):
    wf = copy_workflow(tmp_path)
    # 6 tasks x 3 seeds x 4 orders; the three archives are download jobs, not preconditions; one extract job
    # unpacks the four tasks of lra_release.gz in a single pass
    assert job_counts(wf, "--configfile", "workflow/presets/lra.yaml") == {
        "download": 3,
        "extract_lra": 1,
        "prepare": 6,
        "pretrain": 18,
        "train_baseline": 72,
        "train_equal_budget": 72,
        "reduce": 144,
        "retrain": 144,
        "aggregate": 1,
        "plot": 1,
    }


def dry_run_jobs(cwd: Path, *args: str) -> list[dict[str, str]]:
    """The jobs of `snakemake -n -p`: per job its rule, resources line and shell command."""
    out = snakemake(cwd, "-n", "-p", *args).stdout
    jobs = []
    for block in re.split(r"\n(?=rule \w+:\n)", out):
        rule = re.match(r"rule (\w+):\n", block)
        if rule is None:
            continue
        resources = re.search(r"^ +resources: (.*)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append(
            {
                "rule": rule.group(1),
                "resources": resources.group(1) if resources else "",
                "shell": shell.group(1) if shell else "",
            }
        )
    return jobs


def gpus_requested(resources: str) -> int:
    """The GPUs a job asks SLURM for: its gpu resource, or the count of a gres gpu:N."""
    gpu = re.search(r"(?:^|, )gpu=(\d+)", resources)
    gres = re.search(r"(?:^|, )gres=[^,]*gpu(?::\w+)*:(\d+)", resources)
    return int(gpu.group(1)) if gpu else int(gres.group(1)) if gres else 0


PRESETS = sorted(p.name for p in (ROOT / "workflow" / "presets").glob("*.yaml"))


@pytest.mark.parametrize("preset", [None, *PRESETS])
def test_every_cuda_job_requests_a_gpu(tmp_path, preset):
    """Under the SLURM profile, every job whose command selects CUDA asks for a GPU: a job run with --device cuda
    on a node without one exits 2 ("torch sees no CUDA device"). Every preset, and the default switched to cuda."""
    wf = copy_workflow(tmp_path)
    if preset is None:
        (wf / "cuda.yaml").write_text("device: cuda\n")
        args = ["--configfile", "config.yaml", "cuda.yaml"]
    else:
        args = ["--configfile", f"workflow/presets/{preset}"]
    targets = ["all", "compress"] if preset == "compressible.yaml" else ["all"]
    jobs = dry_run_jobs(wf, *targets, "--profile", "profiles/slurm", *args)
    assert jobs, "the dry run listed no jobs"
    cuda = [j for j in jobs if re.search(r"--device +cuda\b", j["shell"])]
    missing = [f"{j['rule']}: {j['resources']}" for j in cuda if gpus_requested(j["resources"]) < 1]
    assert not missing, f"{len(missing)} of {len(cuda)} CUDA jobs request no GPU, e.g. {missing[:3]}"
    if preset is None or preset == "lra.yaml":
        # the check has jobs to look at: pretrainings, retrainings (rule train) and reductions (rule reduce)
        assert {j["rule"] for j in cuda} == {"train", "reduce"}
        assert any("--init skew_hippo" in j["shell"] for j in cuda) and any(
            "--init from_reduced" in j["shell"] for j in cuda
        )


def test_gpu_request_parsing():
    assert gpus_requested("tmpdir=/tmp, mem_mb=8000, runtime=60") == 0
    assert gpus_requested("mem_mb=8000, gpu=1, runtime=60") == 1
    assert gpus_requested("mem_mb=8000, gres=gpu:a100:2") == 2
    assert gpus_requested("mem_mb=8000, gpu_model=a100") == 0


def test_study_preset_dry_run_job_counts(tmp_path):
    wf = copy_workflow(tmp_path)
    # 3 tasks x 5 seeds x 2 orders x (bt + transplant + random modes) + equal budget + one continued model per
    # pretraining; the correlation study: 2 snapshots per pretraining, each reduced and retrained
    assert job_counts(wf, "--configfile", "workflow/presets/study.yaml") == {
        "generate": 3,
        "prepare": 3,
        "pretrain": 15,
        "snapshot": 30,
        "train_baseline": 30,
        "train_equal_budget": 30,
        "continue_full": 15,
        "reduce": 90,
        "reduce_snapshot": 30,
        "retrain": 90,
        "retrain_snapshot": 30,
        "aggregate": 1,
        "correlation": 1,
        "plot": 1,
    }


def test_methods_preset_dry_run_job_counts(tmp_path):
    wf = copy_workflow(tmp_path)
    # 3 tasks x 2 seeds x (3 orders + 1 tolerance row) x 4 methods, no controls (the preset's own lists)
    assert job_counts(wf, "--configfile", "workflow/presets/methods.yaml") == {
        "generate": 3,
        "prepare": 3,
        "pretrain": 6,
        "train_baseline": 24,
        "reduce": 96,
        "retrain": 96,
        "choose_orders": 6,
        "aggregate": 1,
        "plot": 1,
    }


@pytest.mark.parametrize(
    "edit, message",
    [
        ("tasks: [listops, sudoku]", r"'sudoku' is not one of"),
        ("seeds: []", r"\[\] should be non-empty|is too short"),
        ("seeds: [zero]", r"'zero' is not of type 'integer'"),
        ("orders: [2, 4]", r"orders contains 4, not below N = model.d_state = 4"),
        ("optim: {lr: '1e-3'}", r"'1e-3' is not of type 'number'"),
        ("model: {norm: group}", r"'group' is not one of \['layer', 'batch'\]"),
        ("tasks: [text]", r"tasks lists 'text' but data.text is missing"),
        ("methods: [bt, pod]", r"'pod' is not one of " + re.escape(str(list(REDUCTIONS)))),
        ("controls: [skew_hippo_eq]", r"'skew_hippo_eq' is not one of"),
        (
            "methods: [bt, transplant]",
            r"'transplant' is not one of " + re.escape(str(list(REDUCTIONS))),
        ),
        ("correlation: {epochs: [1], order: 4}", r"correlation.order = 4 is not below N = 4"),
        ("correlation: {epochs: [1], order: 2}", r"correlation.epochs \[1\] must be below the pretraining epochs"),
        ("correlation: {epochs: [1]}", r"'order' is a required property"),
        (
            "correlation_study: {knob: lr_factor, values: [1.0], seeds: [0], rseeds: [0, 1], order: 2}",
            r"correlation_study: 1 pretrainings per task \(seeds x values\); at least 3 needed",
        ),
        (
            "correlation_study: {knob: lr_factor, values: [0.5, 1.0], seeds: [0, 1], rseeds: [0, 1], order: 4}",
            r"correlation_study.order = 4 is not below N = 4",
        ),
        ("correlation_study: {knob: lr_factor, values: [1.0], seeds: [0], rseeds: [0], order: 2}", r"is too short"),
        ("correlation_study: {knob: lr, values: [1.0], seeds: [0], rseeds: [0, 1], order: 2}", r"'lr' is not one of"),
        (
            "correlation_study: {knob: dropout, values: [0.5, 1.0], seeds: [0, 1], rseeds: [0, 1], order: 2}",
            r"correlation_study.values: dropout 1.0 is not below 1",
        ),
        ("orders: [2, 'tol:1.5']", r"config: orders: order 'tol:1.5': the tol must lie in \(0, 1\)"),
        ("orders: [2, 'tol:small']", r"'tol:small' is not valid under any of the given schemas"),
        ("optim: {on_divergence: skip}", r"'skip' is not one of \['fail', 'keep_best'\]"),
        (
            "compressibility: {keep: [0.5], reduce_during_epochs: [2]}",
            r"variant shrink0.5 of task listops: .*at_epochs=\[2\] must increase strictly within \[1, optim.epochs=2\)",
        ),
        ("compressibility: {keep: [1.5]}", r"1.5 is greater than or equal to the maximum of 1"),
    ],
)
def test_bad_config_fails_at_parse_time_naming_key_and_value(tmp_path, edit, message):
    wf = copy_workflow(tmp_path)
    (wf / "edit.yaml").write_text(edit + "\n")
    p = snakemake(wf, "-n", "--configfile", str(TINY), "edit.yaml", check=False)
    assert p.returncode != 0
    assert re.search(message, p.stdout + p.stderr), (p.stdout + p.stderr)[-2000:]


def run_tiny_locally(dest: Path) -> Path:
    """Copy the workflow into ``dest`` and run the tiny grid there with 2 cores (about a minute)."""
    wf = copy_workflow(dest)
    shutil.copy(TINY, wf / "tiny.yaml")
    snakemake(wf, "--cores", "2", "--configfile", "tiny.yaml")
    return wf


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny grid, run for real once."""
    return run_tiny_locally(tmp_path_factory.mktemp("wf"))


def edited(wf: Path, text: str) -> dict[str, int]:
    (wf / "edit.yaml").write_text(text)
    return job_counts(wf, "--configfile", "tiny.yaml", "edit.yaml")


def test_tiny_run_produces_tables_and_plots(tiny_run):
    for name in (
        "tables/accuracy.csv",
        "tables/accuracy.md",
        "tables/accuracy.tex",
        "tables/runs.csv",
        "tables/methods.md",
        "tables/differences.csv",
        "plots/accuracy_vs_order.png",
        "plots/accuracy_vs_order.pdf",
        "plots/hsv_decay.png",
        "plots/pretrained_vs_bt.png",
        "plots/learning_curves.png",
        "plots/learning_curves.pdf",
        "plots/forest.png",
        "plots/forest.pdf",
    ):
        assert (tiny_run / "results" / name).stat().st_size > 0, name
    md = (tiny_run / "results/tables/accuracy.md").read_text()
    for row in (
        "| image | 4 (full N) | Skew-HiPPO |",
        "| image | 2 | BT-init (retrained) |",
        "| listops | 2 | BT, no retraining |",
        "| image | 2 | Skew-HiPPO, equal budget |",
    ):
        assert row in md, md
    import json

    run = tiny_run / "results/runs/image/seed0"
    equal = json.loads((run / "skew_hippo_equal_r2/metrics.json").read_text())
    pre, ret = (json.loads((run / f"{r}/metrics.json").read_text()) for r in ("pretrain", "bt_init_r2"))
    assert equal["run"] == "skew_hippo_equal_r2" and equal["method"] == "skew_hippo_equal"
    assert equal["epochs_run"] == pre["epochs_run"] + ret["epochs_run"] == 2  # the BT-init model's total budget


def test_noop_rerun_schedules_nothing(tiny_run):
    assert job_counts(tiny_run, "--configfile", "tiny.yaml") == {}


def test_on_divergence_reaches_the_training_jobs_only_where_set(tmp_path):
    """optim.on_divergence has no schema default: at its default it is not in any job's --hparams, so runs
    finished before the key existed stay up to date; set, it reaches every training job."""
    wf = copy_workflow(tmp_path)
    plain = snakemake(wf, "-n", "-p", "--configfile", str(TINY)).stdout
    # the tiny grid's training jobs: pretrain, baseline, equal-budget control and retrain, for 2 tasks
    assert plain.count("python -m dssbt train") == 8 and '"on_divergence"' not in plain
    (wf / "edit.yaml").write_text("optim: {on_divergence: keep_best}\n")
    edited_out = snakemake(wf, "-n", "-p", "--configfile", str(TINY), "edit.yaml").stdout
    assert edited_out.count('"on_divergence": "keep_best"') == 8, edited_out[-3000:]


def test_retrain_edit_schedules_retrain_and_downstream_only(tiny_run):
    # the retraining's learning rate reaches the retraining only; its epochs also the equal-budget control's total
    assert edited(tiny_run, "retrain: {optim: {lr: 0.02}}\n") == {"retrain": 2, "aggregate": 1, "plot": 1}
    assert edited(tiny_run, "retrain: {optim: {epochs: 2}}\n") == {
        "retrain": 2,
        "train_equal_budget": 2,
        "aggregate": 1,
        "plot": 1,
    }


def test_one_task_edit_schedules_that_tasks_jobs_only(tiny_run):
    assert edited(tiny_run, "task_settings: {image: {optim: {lr: 0.02}}}\n") == {
        "pretrain": 1,
        "train_baseline": 1,
        "train_equal_budget": 1,
        "reduce": 1,
        "retrain": 1,
        "aggregate": 1,
        "plot": 1,
    }


def test_new_order_schedules_its_jobs_and_aggregation_only(tiny_run):
    assert edited(tiny_run, "orders: [2, 3]\n") == {
        "train_baseline": 2,
        "train_equal_budget": 2,
        "reduce": 2,
        "retrain": 2,
        "aggregate": 1,
        "plot": 1,
    }


def test_dropping_a_control_schedules_the_tables_and_plots_only(tiny_run):
    assert edited(tiny_run, "controls: []\n") == {"aggregate": 1, "plot": 1}


def test_adding_reduce_controls_schedules_only_their_jobs(tiny_run):
    assert edited(tiny_run, "controls: [skew_hippo_equal, transplant, random_modes]\n") == {
        "reduce": 4,
        "retrain": 4,
        "aggregate": 1,
        "plot": 1,
    }


def test_adding_the_full_continued_control_schedules_one_job_per_task_and_seed(tiny_run):
    assert edited(tiny_run, "controls: [skew_hippo_equal, full_continued]\n") == {
        "continue_full": 2,
        "aggregate": 1,
        "plot": 1,
    }


def test_adding_the_equal_budget_control_schedules_only_its_jobs(tmp_path):
    """From a grid without controls, adding skew_hippo_equal adds one training job per task, seed and order (and
    reruns the tables and plots, which every added run does); nothing upstream changes."""
    wf = copy_workflow(tmp_path)
    shutil.copy(TINY, wf / "tiny.yaml")
    (wf / "none.yaml").write_text("controls: []\n")
    (wf / "equal.yaml").write_text("controls: [skew_hippo_equal]\n")
    without = job_counts(wf, "--configfile", "tiny.yaml", "none.yaml")
    assert "train_equal_budget" not in without
    assert job_counts(wf, "--configfile", "tiny.yaml", "equal.yaml") == without | {"train_equal_budget": 2}


def test_hsv_reg_in_pretraining_reruns_pretraining_and_downstream_only(tiny_run):
    assert edited(tiny_run, "pretrain: {optim: {hsv_reg: 0.01}}\n") == {
        "pretrain": 2,
        "reduce": 2,
        "retrain": 2,
        "aggregate": 1,
        "plot": 1,
    }


def test_plot_edit_schedules_plots_only(tiny_run):
    assert edited(tiny_run, "plot: {dpi: 80}\n") == {"plot": 1}


def test_reduction_route_edit_schedules_reduce_and_downstream(tiny_run):
    assert edited(tiny_run, "reduction: {route: continuous}\n") == {
        "reduce": 2,
        "retrain": 2,
        "aggregate": 1,
        "plot": 1,
    }


def test_new_method_schedules_only_that_methods_jobs(tiny_run):
    assert edited(tiny_run, "methods: [bt, modal]\n") == {"reduce": 2, "retrain": 2, "aggregate": 1, "plot": 1}


def test_report_bundles_tables_and_figures(tiny_run):
    snakemake(tiny_run, "--configfile", "tiny.yaml", "--report", "report.html")
    html = (tiny_run / "report.html").read_text(errors="replace")
    assert "accuracy_vs_order.png" in html and "accuracy.csv" in html
    # the long-form differences and the side-by-side table too, filed under category and subcategory with labels
    assert "differences.csv" in html and "methods.md" in html
    assert '"Main grid": {"Tables": [' in html and '"labels": {"table": "paired differences"' in html


def test_tolerance_order_schedules_its_own_jobs(tiny_run):
    assert edited(tiny_run, "orders: [2, 'tol:0.1']\n") == {
        "choose_orders": 2,
        "train_baseline": 2,
        "train_equal_budget": 2,
        "reduce": 2,
        "retrain": 2,
        "aggregate": 1,
        "plot": 1,
    }


def test_tolerance_order_runs_end_to_end(tiny_run):
    """Last in this file: it changes the tiny run's tables (the tests above compare against the plain grid)."""
    import json

    # image only (the assertions read image's runs): the ListOps half would double the jobs and check nothing more
    (tiny_run / "tol.yaml").write_text("tasks: [image]\norders: [2, 'tol:0.1']\nmethods: [bt, modal]\n")
    snakemake(tiny_run, "--cores", "2", "--configfile", "tiny.yaml", "tol.yaml")
    run = tiny_run / "results/runs/image/seed0"
    chosen = json.loads((run / "orders_tol0.1.json").read_text())
    assert (
        chosen["order_spec"] == "tol:0.1"
        and chosen["tol"] == 0.1
        and len(chosen["layer_orders"]) == 1
        and 1 <= chosen["layer_orders"][0] <= 4
    )
    for kind in (
        "skew_hippo_rtol0.1",
        "skew_hippo_equal_rtol0.1",
        "bt_rtol0.1",
        "bt_init_rtol0.1",
        "modal_init_rtol0.1",
    ):
        m = json.loads((run / kind / "metrics.json").read_text())
        assert m["layer_orders"] == chosen["layer_orders"] and m["order_spec"] == "tol:0.1", kind
        assert m["run"] == kind, kind  # metrics name their own run folder
    report = json.loads((run / "bt_rtol0.1/report.json").read_text())
    assert report["layer_orders"] == chosen["layer_orders"] and report["order_spec"] == "tol:0.1"
    # retraining starts from the reduced model: its epoch-0 accuracy is the reduce job's
    red = json.loads((run / "bt_rtol0.1/metrics.json").read_text())
    ret = json.loads((run / "bt_init_rtol0.1/metrics.json").read_text())
    assert ret["threads"] == red["threads"]  # exact: both jobs evaluate with the same thread count
    assert ret["initial"]["accuracy"]["test"] == red["accuracy"]["test"]
    md = (tiny_run / "results/tables/accuracy.md").read_text()
    assert re.search(r"\| image \| tol:0.1 \(mean r \d\.\d\) \| Modal-init \(retrained\) \|", md), md
    assert job_counts(tiny_run, "--configfile", "tiny.yaml", "tol.yaml") == {}


def test_controls_run_end_to_end_through_reduce_and_retrain(tiny_run):
    """transplant and random_modes reduce and retrain like a method; their folders, metrics and table rows."""
    import json

    (tiny_run / "controls.yaml").write_text("tasks: [image]\ncontrols: [skew_hippo_equal, transplant, random_modes]\n")
    snakemake(tiny_run, "--cores", "2", "--configfile", "tiny.yaml", "controls.yaml")
    run = tiny_run / "results/runs/image/seed0"
    for name in ("transplant", "random_modes"):
        red = json.loads((run / f"{name}_r2/metrics.json").read_text())
        ret = json.loads((run / f"{name}_init_r2/metrics.json").read_text())
        assert (red["stage"], red["method"], red["run"]) == ("reduce", name, f"{name}_r2")
        assert (ret["stage"], ret["method"], ret["run"]) == ("retrain", name, f"{name}_init_r2")
        assert ret["threads"] == red["threads"]  # exact: both jobs evaluate with the same thread count
        assert ret["initial"]["accuracy"]["test"] == red["accuracy"]["test"]  # retraining starts from it
    report = json.loads((run / "random_modes_r2/report.json").read_text())
    assert report["seed"] == 0 and len(report["layers"][0]["kept"][0][0]) == 2
    md = (tiny_run / "results/tables/accuracy.md").read_text()
    assert "| image | 2 | Transplant (retrained) |" in md and "| image | 2 | Random modes, no retraining |" in md
    assert job_counts(tiny_run, "--configfile", "tiny.yaml", "controls.yaml") == {}


H2_CONFIG = "methods: [bt, h2]\n"  # the tiny grid with the h2 reduction beside bt


def test_h2_options_rerun_only_the_h2_jobs(tiny_run):
    """After a real run with bt and h2, editing reduction.h2 schedules the h2 reductions and retrains only."""
    (tiny_run / "h2.yaml").write_text(H2_CONFIG)
    snakemake(tiny_run, "--cores", "2", "--configfile", "tiny.yaml", "h2.yaml")
    (tiny_run / "h2_opts.yaml").write_text("reduction: {h2: {max_iter: 5}}\n")
    assert job_counts(tiny_run, "--configfile", "tiny.yaml", "h2.yaml", "h2_opts.yaml") == {
        "reduce": 2,
        "retrain": 2,
        "aggregate": 1,
        "plot": 1,
    }


def test_local_run_with_more_cores_than_cpus_says_so(tiny_run):
    """--cores above the machine's CPUs gets a note naming both numbers and --cores all; --cores 1 gets none. Runs
    only the plot job (a plot edit), after the h2 test above, in that test's configuration (written here too, so
    that the test also runs alone: it then runs the h2 jobs first)."""
    cpus = len(os.sched_getaffinity(0))
    (tiny_run / "h2.yaml").write_text(H2_CONFIG)
    (tiny_run / "dpi.yaml").write_text("plot: {dpi: 81}\n")
    over = snakemake(tiny_run, "--cores", str(cpus + 2), "--configfile", "tiny.yaml", "h2.yaml", "dpi.yaml")
    assert f"note: --cores {cpus + 2} on a machine with {cpus} CPUs" in over.stderr, over.stderr[-2000:]
    assert f"--cores all uses {cpus}" in over.stderr
    (tiny_run / "dpi.yaml").write_text("plot: {dpi: 82}\n")
    one = snakemake(tiny_run, "--cores", "1", "--configfile", "tiny.yaml", "h2.yaml", "dpi.yaml")
    assert "note: --cores" not in one.stderr and "Finished jobid" in one.stderr  # it ran, and said nothing


def test_planning_imports_no_torch():
    """Every dssbt module the Snakefile and the rule files import, imported in a fresh interpreter, leaves torch out:
    torch costs about a second of every snakemake call (dry runs included)."""
    import re

    sources = [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]
    modules = sorted({m for f in sources for m in re.findall(r"^(?:from|import) (dssbt[\w.]*)", f.read_text(), re.M)})
    assert "dssbt.reduction.registry" in modules and "dssbt.config_check" in modules, modules  # hparams via it
    code = f"import sys\nfor m in {modules!r}:\n    __import__(m)\nprint('torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert p.returncode == 0 and p.stdout.strip() == "False", (modules, p.stdout, p.stderr[-2000:])


def test_reduce_during_in_pretraining_reruns_pretraining_and_what_reads_it_only(tiny_run):
    # the tiny grid pretrains 1 epoch, and a reduction needs an epoch after it: 2 pretraining epochs, which the
    # equal-budget control counts (its epochs are pretraining + retraining); the baselines stay as they are
    assert edited(tiny_run, "pretrain: {optim: {epochs: 2, reduce_during: {at_epochs: [1], tol: 0.001}}}\n") == {
        "pretrain": 2,
        "train_equal_budget": 2,
        "reduce": 2,
        "retrain": 2,
        "aggregate": 1,
        "plot": 1,
    }


def test_reduce_during_outside_the_pretraining_fails_at_parse_time(tmp_path):
    wf = copy_workflow(tmp_path)
    (wf / "edit.yaml").write_text("retrain: {optim: {reduce_during: {at_epochs: [1], tol: 0.1}}}\n")
    p = snakemake(wf, "-n", "--configfile", str(TINY), "edit.yaml", check=False)
    assert (
        p.returncode != 0
        and "retrain.optim.reduce_during: in-training reduction applies to the pretraining "
        "only; set it under pretrain.optim"
        in p.stdout + p.stderr
    )


def test_compressible_preset_dry_run_job_counts(tmp_path):
    wf = copy_workflow(tmp_path)
    # 3 tasks x 3 seeds: 2 hsv_reg pretrainings + 3 in-training reduction runs; 3 variants (plain = the main grid's
    # pretraining) x 3 kept fractions, each with its orders, reduction and retraining
    assert job_counts(wf, "compress", "--configfile", "workflow/presets/compressible.yaml") == {
        "generate": 3,
        "prepare": 3,
        "pretrain": 9,
        "compress_pretrain": 45,
        "compress_orders": 81,
        "compress_reduce": 81,
        "compress_retrain": 81,
        "compress_table": 1,
        "compress": 1,
    }


def test_compress_run_on_the_tiny_grid_tabulates_every_variant(tiny_run):
    (tiny_run / "compress.yaml").write_text(
        "compressibility: {keep: [0.5], hsv_reg: [0.01], reduce_during_epochs: [1]}\n"
    )
    snakemake(tiny_run, "compress", "--cores", "2", "--configfile", "tiny.yaml", "compress.yaml")
    import pandas as pd

    tab = pd.read_csv(tiny_run / "results/tables/compress.csv")
    assert sorted(zip(tab.task, tab.variant)) == sorted(
        (t, v) for t in ("image", "listops") for v in ("plain", "hsvreg0.01", "shrink0.5")
    )
    for task in ("image", "listops"):  # the table's numbers are the metrics files' (one seed)
        folder = tiny_run / f"results/compress/{task}/seed0"
        ret = json.loads((folder / "hsvreg0.01/bt_init_rbudget0.5/metrics.json").read_text())
        row = tab[(tab.task == task) & (tab.variant == "hsvreg0.01")].iloc[0]
        assert row.retrained_mean == pytest.approx(100 * ret["accuracy"]["test"])
        shrunk = json.loads((folder / "shrink0.5/pretrain/metrics.json").read_text())
        assert shrunk["layer_orders"] == [2] and shrunk["epochs_run"] == 2  # N = 4 -> 2, pretraining + retraining
        assert (
            json.loads((folder / "hsvreg0.01/pretrain/metrics.json").read_text())["hparams"]["optim"]["hsv_reg"] == 0.01
        )
    assert (tiny_run / "results/plots/compress_hsv_decay.png").stat().st_size > 0


def test_compress_target_without_a_compressibility_section_says_where_one_is(tmp_path):
    wf = copy_workflow(tmp_path)
    p = snakemake(wf, "-n", "compress", check=False)
    assert p.returncode != 0
    assert "target compress needs a compressibility section" in p.stdout + p.stderr


def test_tensorboard_switch_reaches_every_training_job_and_only_them(tmp_path):
    """config log.tensorboard: every training job writes its curves under tensorboard/<run>/ (one logdir for the
    whole grid); off by default."""
    wf = copy_workflow(tmp_path)
    off = dry_run_jobs(wf)
    assert not any("--tensorboard" in j["shell"] for j in off)
    (wf / "tb.yaml").write_text("log: {tensorboard: true}\n")
    on = dry_run_jobs(wf, "--configfile", "config.yaml", "tb.yaml")
    train = [j for j in on if j["rule"] == "train"]
    assert train and all(re.search(r"--out results/(\S+) --tensorboard tensorboard/\1 ", j["shell"]) for j in train), (
        train[0]["shell"]
    )
    assert not any("--tensorboard" in j["shell"] for j in on if j["rule"] != "train")


# ----- the evidence studies: budget ladder and learning-rate grid (evidence.smk) ---------------------------------


def test_ladder_dry_run_job_counts(tmp_path):
    """Target ladder: per task and seed, x1 is the main grid's pretraining, reduction, retraining and equal-budget
    run, x2 its own four (and with no_warmup one more retraining per multiplier); as part of all it adds only its
    own jobs to the default grid's."""
    wf = copy_workflow(tmp_path)
    (wf / "ladder.yaml").write_text("evidence: {ladder: {multipliers: [1, 2], order: 4}}\n")
    per_mult = {"pretrain": 6, "reduce": 6, "retrain": 6, "train_equal_budget": 6}
    own = {"ladder_pretrain": 6, "ladder_reduce": 6, "ladder_retrain": 6, "ladder_equal": 6}
    assert job_counts(wf, "ladder", "--configfile", "config.yaml", "ladder.yaml") == per_mult | own | {
        "generate": 2,
        "prepare": 2,
        "ladder_table": 1,
        "ladder": 1,
    }
    assert job_counts(wf, "--configfile", "config.yaml", "ladder.yaml") == job_counts(wf) | own | {"ladder_table": 1}
    (wf / "warm.yaml").write_text("evidence: {ladder: {multipliers: [1, 2], order: 4, no_warmup: true}}\n")
    counts = job_counts(wf, "ladder", "--configfile", "config.yaml", "warm.yaml")
    assert counts["ladder_retrain_no_warmup"] == 12 and counts["ladder_retrain"] == 6


def test_lr_grid_dry_run_job_counts(tmp_path):
    """Target lr_grid on its own seeds (one not in the main grid's): per task, seed and factor other than 1 one
    retraining and one equal-budget run; factor 1 is the main grid's retraining and equal-budget run, which with
    the BT-init arm's reduction and pretraining are built for every lr-grid seed."""
    wf = copy_workflow(tmp_path)
    (wf / "lr.yaml").write_text("evidence: {lr_grid: {factors: [0.5, 1, 2], seeds: [0, 1, 2, 3]}}\n")
    assert job_counts(wf, "lr_grid", "--configfile", "config.yaml", "lr.yaml") == {
        "generate": 2,
        "prepare": 2,
        "pretrain": 8,
        "reduce": 8,
        "retrain": 8,
        "train_equal_budget": 8,
        "lr_retrain": 16,
        "lr_equal": 16,
        "lr_grid_table": 1,
        "lr_grid": 1,
    }


@pytest.mark.parametrize(
    "edit, message",
    [
        ("evidence: {ladder: {multipliers: [0, 2]}}", "0"),
        ("evidence: {lr_grid: {factors: [-1]}}", "-1"),
        ("evidence: {ladder: {multipliers: [2], order: 99}}", "evidence.ladder.order = 99"),
    ],
)
def test_bad_evidence_config_fails_at_parse_time(tmp_path, edit, message):
    wf = copy_workflow(tmp_path)
    (wf / "bad.yaml").write_text(edit + "\n")
    p = snakemake(wf, "-n", "--configfile", "config.yaml", "bad.yaml", check=False)
    assert p.returncode != 0 and message in p.stdout + p.stderr


def test_ladder_target_without_a_ladder_section_says_where_one_is(tmp_path):
    wf = copy_workflow(tmp_path)
    p = snakemake(wf, "-n", "ladder", check=False)
    assert p.returncode != 0 and "workflow/presets/ladder.yaml" in p.stdout + p.stderr


def test_tiny_ladder_runs_end_to_end_and_a_new_multiplier_schedules_only_its_jobs(tmp_path):
    """One task, one seed, 1 epoch per stage, multipliers 1 and 2: the x2 runs train twice the epochs, the table
    and plot are written; then adding x3 schedules only x3's four runs and the table."""
    wf = copy_workflow(tmp_path)
    shutil.copy(TINY, wf / "tiny.yaml")
    (wf / "ladder.yaml").write_text(
        "tasks: [image]\ncontrols: [skew_hippo_equal]\nevidence: {ladder: {multipliers: [1, 2], order: 2}}\n"
    )
    snakemake(wf, "--cores", "2", "ladder", "--configfile", "tiny.yaml", "ladder.yaml")
    import pandas as pd

    points = pd.read_csv(wf / "results/tables/ladder_points.csv").set_index(["mult", "arm"])
    assert points.loc[(1, "bt_init"), "epochs"] == 2 and points.loc[(2, "bt_init"), "epochs"] == 4
    assert points.loc[(1, "skew_hippo_equal"), "epochs"] == 2 and points.loc[(2, "skew_hippo_equal"), "epochs"] == 4
    x2 = json.loads((wf / "results/ladder/image/seed0/x2/bt_init_r2/metrics.json").read_text())
    assert x2["epochs_run"] == 2
    assert (wf / "results/plots/ladder.png").stat().st_size > 0
    assert len(pd.read_csv(wf / "results/tables/ladder_differences.csv")) == 2
    (wf / "more.yaml").write_text("evidence: {ladder: {multipliers: [1, 2, 3], order: 2}}\n")
    assert job_counts(wf, "ladder", "--configfile", "tiny.yaml", "ladder.yaml", "more.yaml") == {
        "ladder_pretrain": 1,
        "ladder_reduce": 1,
        "ladder_retrain": 1,
        "ladder_equal": 1,
        "ladder_table": 1,
        "ladder": 1,
    }


def test_ladder_and_lr_grid_presets_dry_run_job_counts(tmp_path):
    """ladder.yaml: 2 tasks x 3 seeds x multipliers 1, 2, 4 x (pretraining, reduction, retraining, the no-warmup
    retraining, equal budget), x1 the main grid's; lr_grid.yaml: the main grid's four runs per task and seed and
    2 factors x 2 arms of its own."""
    wf = copy_workflow(tmp_path)
    data = {"generate": 2, "prepare": 2}
    assert job_counts(wf, "ladder", "--configfile", "workflow/presets/ladder.yaml") == data | {
        "pretrain": 6,
        "reduce": 6,
        "retrain": 6,
        "train_equal_budget": 6,
        "ladder_pretrain": 12,
        "ladder_reduce": 12,
        "ladder_retrain": 12,
        "ladder_equal": 12,
        "ladder_retrain_no_warmup": 18,
        "ladder_table": 1,
        "ladder": 1,
    }
    assert job_counts(wf, "lr_grid", "--configfile", "workflow/presets/lr_grid.yaml") == data | {
        "pretrain": 6,
        "reduce": 6,
        "retrain": 6,
        "train_equal_budget": 6,
        "lr_retrain": 12,
        "lr_equal": 12,
        "lr_grid_table": 1,
        "lr_grid": 1,
    }


def test_adding_the_ladder_to_a_finished_grid_schedules_only_its_jobs(tiny_run):
    """x1 of the ladder is the finished grid's runs: adding multipliers 1 and 2 schedules x2's four runs per task and
    the ladder's table, and no main table (aggregate reads the evidence section without the ladder): the jobs with
    the ladder are the jobs without it (whatever earlier tests of this module left to do) plus exactly these."""
    from collections import Counter

    before = Counter(edited(tiny_run, "{}\n"))
    after = Counter(edited(tiny_run, "evidence: {ladder: {multipliers: [1, 2], order: 2}}\n"))
    own = {"ladder_pretrain": 2, "ladder_reduce": 2, "ladder_retrain": 2, "ladder_equal": 2, "ladder_table": 1}
    assert after == before + Counter(own)


# 2 tasks x seeds: the main pretraining each; methods x budgets, each reduced and retrained; the HSV orders per budget
# (shared by bt, bsp, modal, h2, msp) and LAST's and top-energy's own orders per budget
FRONTIER_JOBS = {
    # 10 seeds, 7 methods x 4 budgets
    "frontier.yaml": dict(pretrain=20, compress_orders=80, compress_orders_allocated=160, compress_reduce=560),
    # 5 seeds, 3 methods (bt, top_energy, last) x 2 budgets
    "frontier_small.yaml": dict(pretrain=10, compress_orders=20, compress_orders_allocated=40, compress_reduce=60),
}


@pytest.mark.parametrize("preset", list(FRONTIER_JOBS))
def test_frontier_preset_dry_run_job_counts(tmp_path, preset):
    wf = copy_workflow(tmp_path)
    n = FRONTIER_JOBS[preset]
    assert job_counts(wf, "compress", "--configfile", f"workflow/presets/{preset}") == {
        "generate": 2,
        "prepare": 2,
        **n,
        "compress_retrain": n["compress_reduce"],
        "compress_table": 1,
        "compress": 1,
    }
