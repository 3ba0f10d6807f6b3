"""The SLURM profile against a real one-node SLURM cluster on this machine (tests/slurm/cluster.sh: munged, MariaDB,
slurmdbd, slurmctld, slurmd from Debian's packages). The cluster comes up once per session and goes down at its
end, also when a test fails. Tests are marked `slurm`; they are skipped, with the reason in pytest's summary, only
where SLURM cannot start here (not root, no apt to install it).

profiles/slurm is used as shipped; the command line only fills in its site placeholders (partition, account)
and lowers the plugin's wait before the first status check, which dominates minute-sized jobs."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from test_workflow import ENV, ROOT, SNAKEMAKE, TINY, copy_workflow, job_counts, run_tiny_locally

from dssbt import grid

# One xdist group: the tests share the cluster (brought up once per worker that runs them) and its runs.
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]

CLUSTER_SH = Path(__file__).parent / "slurm" / "cluster.sh"
PARTITION = "debug"  # what cluster.sh sets up
ACCOUNT = "dssbt"
# Memory for pretrain in the out-of-memory test: above the ~100 MB of Snakemake's job-step wrapper, below the
# ~270 MB of a tiny pretraining run, so SLURM kills the training command itself.
OOM_MEM_MB = 150
# Every job of the tiny config (tests/workflow/tiny.yaml), without the local target rule 'all', per rule and, for
# the job rules train and reduce, per run kind (dssbt.grid; test_workflow.job_counts counts so).
# tests/workflow/tiny.yaml: 2 tasks x 1 seed x 1 order, with the equal-budget control
TINY_JOBS = {
    "generate": 2,
    "prepare": 2,
    "pretrain": 2,
    "train_baseline": 2,
    "train_equal_budget": 2,
    "reduce": 2,
    "retrain": 2,
    "aggregate": 1,
    "plot": 1,
}


def by_rule(counts: dict[str, int]) -> dict[str, int]:
    """Job counts per run kind -> per rule (what SLURM accounting records: kinds of dssbt.grid sum into their rule)."""
    out: dict[str, int] = {}
    for name, n in counts.items():
        rule = grid.KINDS[name].command if name in grid.KINDS else name
        out[rule] = out.get(rule, 0) + n
    return out


# the SLURM job comment's wildcards of a pretraining (rule train, run=runs/<task>/seed<s>/pretrain)
PRETRAIN_WILDCARDS = "runs_{task}_seed{seed}_pretrain"


def snakemake(cwd: Path, *args: str, check: bool = True, timeout: float = 480) -> subprocess.CompletedProcess:
    """test_workflow.snakemake with a time limit: a SLURM run whose job states never arrive would wait forever."""
    try:
        p = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, env=ENV, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        # What it printed so far (bytes here, even with text=True)
        out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x for x in (e.stdout, e.stderr) if x)
        raise AssertionError(f"snakemake {' '.join(args)} still running after {timeout} s:\n{out[-3000:]}") from None
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def cluster(command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER_SH), command], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local cluster, brought up once (installing the packages with apt where missing) and torn down at the
    end of the session, unless it was already up before (then whoever started it stops it)."""
    if os.geteuid() != 0:
        pytest.skip(f"SLURM cannot start here: tests/slurm/cluster.sh needs root (uid {os.geteuid()})")
    was_up = cluster("status").returncode == 0

    # A SIGTERM (a CI time limit, say) unwinds like Ctrl-C, so that the teardown below still stops the daemons.
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt) if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else None
    try:
        p = cluster("up", timeout=900)
        if p.returncode == 2:  # cluster.sh: cannot run on this machine (not root, no apt-get)
            pytest.skip(f"SLURM cannot start here: {p.stderr.strip().splitlines()[-1]}")
        assert p.returncode == 0, f"cluster.sh up failed:\n{p.stdout}\n{p.stderr}"
        yield
    finally:
        try:
            if not was_up:
                down = cluster("down")
                assert down.returncode == 0, f"cluster.sh down failed:\n{down.stdout}\n{down.stderr}"
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def profile_args(*extra: str) -> list[str]:
    """--profile profiles/slurm with its placeholders filled in for the local cluster. The profile's other
    default resources are passed on unchanged (a command-line --default-resources replaces the profile's list)."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    resources = dict(profile["default-resources"])
    assert resources["slurm_partition"] == resources["slurm_account"] == "CHANGE_ME", "the profile is a template"
    resources.update(slurm_partition=PARTITION, slurm_account=ACCOUNT)
    return [
        "--profile",
        "profiles/slurm",
        "--default-resources",
        *(f"{k}={v}" for k, v in resources.items()),
        # The plugin's first status check comes after this many seconds; later ones 10 s further apart each
        # time nothing finished. 3 s catches the 10-15 s jobs of the tiny grid at the second check.
        "--slurm-init-seconds-before-status-checks",
        "3",
        *extra,
    ]


def run_id(output: str) -> str:
    """The SLURM run ID of one Snakemake invocation: the plugin submits every job under this name."""
    m = re.search(r"SLURM run ID: (\S+)", output)
    assert m, output[-3000:]
    return m.group(1)


def sacct_jobs(run: str) -> list[dict[str, str]]:
    """The jobs that SLURM accounting recorded for one Snakemake run, in submission order: id, rule, wildcards,
    state, time limit."""
    p = subprocess.run(
        [
            "sacct",
            "-X",
            "-n",
            "-P",
            "-S",
            "now-1days",
            "--name",
            run,
            "-o",
            "JobIDRaw,JobName%100,Comment%300,State,Timelimit",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    )
    jobs = []
    for line in p.stdout.splitlines():
        jobid, name, comment, state, timelimit = line.split("|")
        # The plugin's job comment: rule_<rule> or rule_<rule>_wildcards_<values>
        m = re.fullmatch(r"rule_(\w+?)(?:_wildcards_(.*))?", comment)
        assert m, comment
        jobs.append(
            {
                "id": jobid,
                "rule": m.group(1),
                "wildcards": m.group(2) or "",
                "state": state.split()[0],
                "timelimit": timelimit,
            }
        )
    return jobs


def rule_counts(jobs: list[dict[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["rule"]] = counts.get(job["rule"], 0) + 1
    return counts


@pytest.fixture(scope="module", autouse=True)
def fault_runs(slurm_cluster, tmp_path_factory):
    """The two fault scenarios at the end of this file (a time limit, a requeue), started in threads before any
    test here runs: most of their minutes are spent waiting on SLURM (its 30-s time-limit checks, its 2-minute
    requeue delay), which then overlaps the other scenario and the tiny grid's runs instead of following them.
    Their tests wait for them and re-raise what failed."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {
            "timeout": pool.submit(timeout_scenario, tmp_path_factory.mktemp("timeout")),
            "requeue": pool.submit(requeue_scenario, tmp_path_factory.mktemp("requeue")),
        }


@pytest.fixture(scope="module")
def slurm_runs(slurm_cluster, tmp_path_factory):
    """The tiny grid on SLURM in two invocations: the first, up to the pretraining, with too little memory for
    pretrain (so it fails); the second, with the config's memory, completes the grid."""
    wf = copy_workflow(tmp_path_factory.mktemp("slurm_wf"))
    shutil.copy(TINY, wf / "tiny.yaml")
    # The target first: the options after it take several values each.
    oom = snakemake(
        wf,
        "pretrain_all",
        *profile_args("--configfile", "tiny.yaml", "--set-resources", f"train:mem_mb={OOM_MEM_MB}"),
        check=False,
    )
    oom_out = oom.stdout + oom.stderr
    rerun_plan = job_counts(wf, *profile_args("--configfile", "tiny.yaml"))
    full = snakemake(wf, *profile_args("--configfile", "tiny.yaml"), check=False)
    full_out = full.stdout + full.stderr
    return {
        "wf": wf,
        "oom": oom,
        "oom_out": oom_out,
        "oom_jobs": sacct_jobs(run_id(oom_out)),
        "rerun_plan": rerun_plan,
        "full": full,
        "full_out": full_out,
        "full_jobs": sacct_jobs(run_id(full_out)),
    }


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The same config run locally with 2 cores."""
    return run_tiny_locally(tmp_path_factory.mktemp("local_wf"))


def test_tiny_grid_completes_with_every_job_through_slurm(slurm_runs):
    full = slurm_runs["full"]
    assert full.returncode == 0, slurm_runs["full_out"][-4000:]
    wf = slurm_runs["wf"]
    for name in (
        "tables/accuracy.csv",
        "plots/accuracy_vs_order.png",
        "plots/hsv_decay.png",
        "plots/pretrained_vs_bt.png",
    ):
        assert (wf / "results" / name).stat().st_size > 0, name
    # Every job of the grid finished as a SLURM job, recorded by accounting under one of the two runs' names.
    completed = [j for j in slurm_runs["oom_jobs"] + slurm_runs["full_jobs"] if j["state"] == "COMPLETED"]
    assert rule_counts(completed) == by_rule(TINY_JOBS)
    assert all(j["state"] == "COMPLETED" for j in slurm_runs["full_jobs"]), slurm_runs["full_jobs"]
    pretrained = {j["wildcards"] for j in completed if j["rule"] == "train" and j["wildcards"].endswith("_pretrain")}
    assert pretrained == {PRETRAIN_WILDCARDS.format(task=t, seed=0) for t in ("listops", "image")}
    assert job_counts(wf, *profile_args("--configfile", "tiny.yaml")) == {}


def read_rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def test_slurm_results_equal_local_results(slurm_runs, local_run):
    slurm_wf = slurm_runs["wf"]
    assert slurm_runs["full"].returncode == 0, slurm_runs["full_out"][-4000:]
    # Training is deterministic on CPU with one thread per job: the tables are equal to the last digit (but for the
    # measured wall times they report)
    times = ("wall_time_s", "total_wall_time_s")
    for table in ("accuracy.csv", "runs.csv"):
        assert read_rows(slurm_wf / "results/tables" / table, drop=times) == read_rows(
            local_run / "results/tables" / table, drop=times
        ), table


def test_job_over_its_memory_is_killed_and_the_rerun_resumes(slurm_runs):
    oom, out = slurm_runs["oom"], slurm_runs["oom_out"]
    assert oom.returncode != 0, out[-4000:]
    # SLURM killed pretrain; generate and prepare had completed.
    states = {(j["rule"], j["state"]) for j in slurm_runs["oom_jobs"]}
    assert rule_counts([j for j in slurm_runs["oom_jobs"] if j["state"] == "COMPLETED"]) == {
        "generate": 2,
        "prepare": 2,
    }
    failed = [j for j in slurm_runs["oom_jobs"] if j["rule"] == "train"]
    assert failed and all(j["state"] in ("OUT_OF_MEMORY", "FAILED", "CANCELLED") for j in failed), states
    # Snakemake names the failed rule and the SLURM log, which says why.
    assert "Error in rule train" in out
    logs = re.findall(r"(\S+/\.snakemake/slurm_logs/rule_train/\S+\.log)", out)
    assert logs, out[-4000:]
    text = "\n".join(Path(log).read_text() for log in set(logs) if Path(log).exists())
    assert re.search(r"oom-kill|exceeded memory limit|Exceeded job memory limit", text), text[-2000:]
    # The rerun schedules neither generate nor prepare again, and SLURM ran none of them.
    expected = {k: v for k, v in TINY_JOBS.items() if k not in ("generate", "prepare")}
    assert slurm_runs["rerun_plan"] == expected
    assert rule_counts(slurm_runs["full_jobs"]) == by_rule(expected)
    assert slurm_runs["full"].returncode == 0, slurm_runs["full_out"][-4000:]


def test_config_edit_submits_only_the_invalidated_job(slurm_runs):
    wf = slurm_runs["wf"]
    assert slurm_runs["full"].returncode == 0, slurm_runs["full_out"][-4000:]
    (wf / "edit.yaml").write_text("plot: {dpi: 80}\n")
    p = snakemake(wf, *profile_args("--configfile", "tiny.yaml", "edit.yaml"))
    jobs = sacct_jobs(run_id(p.stdout + p.stderr))
    assert [(j["rule"], j["state"]) for j in jobs] == [("plot", "COMPLETED")]


# ----- faults: time limits and requeueing -------------------------------------------------------------------------

# One listops pretraining job that needs more than SLURM's smallest time limit, 1 minute, plus its kill granularity
# (slurmctld checks time limits every 30 s, so a job ends 60-90 s after it started), and finishes well inside the
# second attempt's 2 minutes: 5000 sequences x 90 epochs of a tiny model, about 110 s of training on the 2-core
# reference machine (an attempt reached epoch 54 in its minute). A job that finishes in the last seconds of its limit
# is reported TIMEOUT all the same; Snakemake then deletes its finished outputs and the next attempt trains from
# scratch (docs/slurm.md). 130 epochs put the second attempt's end a few seconds from its limit: CI hit exactly that.
# resources.pretrain.runtime: 1 asks for 1 minute, then 2, 4, 8 (doubling per attempt, common.smk job_runtime); --retries 3
# instead of the profile's 2 leaves room for a machine loaded by other work.
TIMEOUT_CONFIG = """
tasks: [listops]
seeds: [0]
orders: [2]
data:
  listops:
    source: embedded
    generate: {seed: 0, n_train: 5000, n_val: 40, n_test: 40, max_depth: 2, max_length: 60, min_length: 5}
    prepare: {l_max: 60}
model: {d_model: 16, d_state: 4, n_layers: 1}
optim: {epochs: 90, batch_size: 20, eval_batch_size: 50}
task_settings: {listops: {optim: {epochs: 90}}}
resources: {pretrain: {runtime: 1}}
"""
# A shorter job (about 20 s of CPU) for the requeue test.
REQUEUE_CONFIG = (
    TIMEOUT_CONFIG.replace("n_train: 5000", "n_train: 600")
    .replace("epochs: 90", "epochs: 60")
    .replace("resources: {pretrain: {runtime: 1}}", "")
)
assert REQUEUE_CONFIG.count("epochs: 60") == 2 and "runtime" not in REQUEUE_CONFIG
RUN = "results/runs/listops/seed0/pretrain"


def prepared_workflow(dest: Path, config: str) -> Path:
    """A copy of the workflow with ``config`` as faults.yaml and its data generated and prepared locally."""
    dest.mkdir()
    wf = copy_workflow(dest)
    (wf / "faults.yaml").write_text(config)
    snakemake(wf, "data_all", "--cores", "2", "--configfile", "faults.yaml")
    return wf


def start_local_reference(wf: Path, dest: Path) -> subprocess.Popen:
    """The same pretraining run locally, without interruption, in a copy of ``wf`` (started, not waited for)."""
    ref = shutil.copytree(wf, dest)
    return subprocess.Popen(
        [*SNAKEMAKE, "pretrain_all", "--cores", "1", "--configfile", "faults.yaml"],
        cwd=ref,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def same_training_result(slurm_wf: Path, local: subprocess.Popen, local_wf: Path) -> None:
    out, _ = local.communicate(timeout=900)
    assert local.returncode == 0, out[-3000:]

    def metrics(wf):
        return {k: v for k, v in json.loads((wf / RUN / "metrics.json").read_text()).items() if k != "wall_time_s"}

    assert metrics(slurm_wf) == metrics(local_wf)
    assert read_rows(slurm_wf / RUN / "history.csv", drop=("seconds",)) == read_rows(
        local_wf / RUN / "history.csv", drop=("seconds",)
    )
    assert not (slurm_wf / RUN / "train_state.pt").exists()


def timeout_scenario(tmp_path: Path) -> None:
    """A pretraining killed at its 1-minute limit, retried with more time, resumes; asserts as it goes."""
    wf = prepared_workflow(tmp_path / "slurm", TIMEOUT_CONFIG)
    local = start_local_reference(wf, tmp_path / "local")
    p = snakemake(wf, "pretrain_all", *profile_args("--configfile", "faults.yaml", "--retries", "3"), timeout=1800)
    out = p.stdout + p.stderr
    jobs = [j for j in sacct_jobs(run_id(out)) if j["rule"] == "train"]
    states = [j["state"] for j in jobs]
    # SLURM killed the first attempt at its 1-minute limit; each retry asked for twice the time of the one before
    assert states[0] == "TIMEOUT" and states[-1] == "COMPLETED" and set(states[:-1]) == {"TIMEOUT"}, jobs
    assert [j["timelimit"] for j in jobs] == ["00:01:00", "00:02:00", "00:04:00", "00:08:00"][: len(jobs)], jobs
    # the SLURM log of the killed attempt says why, and the last attempt continued from a saved epoch
    killed = list((wf / ".snakemake/slurm_logs/rule_train").glob(f"*/{jobs[0]['id']}.log"))
    assert len(killed) == 1, out[-3000:]
    assert re.search(r"CANCELLED AT .* DUE TO TIME LIMIT", killed[0].read_text()), killed[0].read_text()[-2000:]
    log = (wf / "logs/train/runs/listops/seed0/pretrain.log").read_text()
    assert re.search(rf"resuming from {RUN}/train_state.pt after epoch [1-9]", log), log[-2000:]
    same_training_result(wf, local, tmp_path / "local")


def requeue_scenario(tmp_path: Path) -> None:
    """A pretraining requeued by SLURM mid-run resumes and ends with the uninterrupted run's metrics."""
    import torch

    wf = prepared_workflow(tmp_path / "slurm", REQUEUE_CONFIG)
    local = start_local_reference(wf, tmp_path / "local")
    run = subprocess.Popen(
        [*SNAKEMAKE, "pretrain_all", *profile_args("--configfile", "faults.yaml")],
        cwd=wf,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        state = wf / RUN / "train_state.pt"
        deadline = time.time() + 600  # its job may wait for a CPU behind the other scenario's and the grid's
        while not state.exists():  # the first epoch completed inside the SLURM job
            assert run.poll() is None and time.time() < deadline, "the job ended before it could be requeued"
            time.sleep(0.2)
        epoch = torch.load(state, weights_only=True)["epoch"]
        # this workflow's job only, by its working directory: the timeout scenario, running at the same time, has a
        # pretraining of the same rule and wildcards
        queue = subprocess.run(["squeue", "-h", "-o", "%i|%Z|%k"], capture_output=True, text=True, env=ENV, check=True)
        ids = [
            line.split("|")[0]
            for line in queue.stdout.splitlines()
            if line.split("|")[1:]
            == [str(wf), "rule_train_wildcards_" + PRETRAIN_WILDCARDS.format(task="listops", seed=0)]
        ]
        assert len(ids) == 1, queue.stdout
        subprocess.run(["scontrol", "requeue", ids[0]], check=True, env=ENV, capture_output=True, text=True)
        # SLURM ends the running job (SIGTERM, SIGKILL after KillWait = 5 s, cluster.sh) and starts it again no
        # sooner than 2 minutes later (its requeue delay): the first run was stopped before it finished
        time.sleep(15)
        assert not (wf / RUN / "metrics.json").exists() and state.exists()
        out, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, out[-4000:]
    # One SLURM job: requeued once (sacct -D lists each run of it), then completed
    runs = subprocess.run(
        ["sacct", "-X", "-D", "-n", "-P", "-j", ids[0], "-o", "State"],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    ).stdout.split()
    assert runs[0] == "REQUEUED" and runs[-1] == "COMPLETED", runs
    assert [j["state"] for j in sacct_jobs(run_id(out)) if j["rule"] == "train"] == ["COMPLETED"]
    log = (wf / "logs/train/runs/listops/seed0/pretrain.log").read_text()
    resumed = re.search(rf"resuming from {RUN}/train_state.pt after epoch (\d+)", log)
    assert resumed and int(resumed.group(1)) >= epoch, log[-2000:]
    same_training_result(wf, local, tmp_path / "local")


def test_training_job_killed_at_its_time_limit_is_retried_with_more_time_and_resumes(fault_runs):
    fault_runs["timeout"].result()  # re-raises what failed in the scenario


def test_requeued_training_job_resumes_and_finishes_with_the_same_metrics(fault_runs):
    fault_runs["requeue"].result()
