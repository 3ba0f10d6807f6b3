"""A rehearsal of the LRA preset (workflow/presets/lra.yaml) on the test suite's SLURM cluster, from download to
tables: official-format fixture archives of all six tasks at their real sequence lengths (ListOps cut at 2048,
Text 4096, Retrieval 2 x 4000, Image and Pathfinder 1024, Path-X 16384), few rows, served from a loopback HTTP
server and named with their SHA-256 in the config's downloads section. The config overrides only counts (rows,
epochs, batch sizes, seeds, orders), the device (cpu) and the resources that fit this machine; model sizes and
sequence lengths stay the preset's. The node has a GPU GRES (tests/slurm/cluster.sh), so the training jobs' GPU
requests are scheduled by SLURM while the jobs run on the CPU."""

import hashlib
import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_data_cli import tar_folder
from test_data_download import Server
from test_data_image import write_cifar
from test_data_listops import HEADER, write_listops
from test_data_pathfinder import write_pathfinder
from test_data_retrieval import write_aan
from test_data_text import write_imdb
from test_slurm import (
    ENV,
    profile_args,
    rule_counts,
    run_id,
    sacct_jobs,
    slurm_cluster,  # noqa: F401
    snakemake,
)
from test_workflow import ROOT, copy_workflow

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]

PRESET = ROOT / "workflow/presets/lra.yaml"
LETTERS = "abcdefghijklmnopqrstuvwxyz "
# The real lengths the preset's prepare options cut at: the prepared l_max of each task
LENGTHS = {"listops": 2048, "text": 4096, "retrieval": 4000, "image": 1024, "pathfinder": 1024, "pathx": 16384}


# ----- fixture archives in the official layouts, at the real lengths -------------------------------------------


def listops_tsv(n: int, rng: np.random.Generator) -> str:
    """``n`` ListOps rows: one [SM (sum modulo 10) over 1500-2200 digits; the first row is longer than the cut, so
    that the prepared length is the preset's l_max."""
    rows = []
    for i in range(n):
        digits = rng.integers(0, 10, 2200 if i == 0 else int(rng.integers(1500, 2200)))
        rows.append(f"( ( [SM {' '.join(map(str, digits))} ] ) )\t{digits.sum() % 10}\n")
    return HEADER + "".join(rows)


def document(rng: np.random.Generator, length: int) -> str:
    return "".join(rng.choice(list(LETTERS), length))


def aan_tsv(n: int, rng: np.random.Generator) -> str:
    """``n`` Retrieval pairs of documents longer than the 4000-character cut."""
    return "".join(f"{i % 2}.0\taan/{i}a\taan/{i}b\t{document(rng, 4100)}\t{document(rng, 4200)}\n" for i in range(n))


def imdb_reviews(n: int, rng: np.random.Generator) -> dict[str, str]:
    """``n`` reviews per split and class, 4100-4600 characters (cut at 4096)."""
    return {
        f"{split}/{cls}/{i}_{7 if cls == 'pos' else 2}.txt": document(rng, int(rng.integers(4100, 4600)))
        for split in ("train", "test")
        for cls in ("neg", "pos")
        for i in range(n)
    }


def build_archives(base: Path, rows: int = 4) -> dict[str, Path]:
    """The three official archives: lra_release.gz (a plain tar despite its name, as the release) with ListOps,
    Retrieval, Pathfinder (32 x 32) and Path-X (128 x 128); aclImdb_v1.tar.gz; cifar-10-python.tar.gz. ``rows``
    training rows, half as many in each other split (Text: as many test reviews, validated on test; Pathfinder and
    Path-X: 10 images, 8/1/1 by the reference split; CIFAR: 20 training and 10 test images), by the per-task
    builders of tests/test_data_*.py, at real lengths."""
    rng = np.random.default_rng(0)
    release = base / "release"
    write_listops(release, *(listops_tsv(n, rng) for n in (rows, rows // 2, rows // 2)))
    write_aan(release, *(aan_tsv(n, rng) for n in (rows, rows // 2, rows // 2)))
    write_pathfinder(release, resolution=32, n=10)  # 80/10/10 by the reference split
    write_pathfinder(release, resolution=128, n=10)
    imdb = write_imdb(base / "imdb", imdb_reviews(rows // 2, rng))  # rows // 2 per class
    cifar = write_cifar(base / "cifar")  # 20 training images, 10 test images, 1024 pixels
    return {
        "lra": tar_folder(release, base / "lra_release.gz", "w"),
        "imdb": tar_folder(imdb, base / "aclImdb_v1.tar.gz", "w:gz"),
        "cifar10": tar_folder(cifar, base / "cifar-10-python.tar.gz", "w:gz"),
    }


# ----- the rehearsal ------------------------------------------------------------------------------------------

# What the rehearsal runs, per rule (one place: rule names change with the workflow). 6 tasks x 1 seed x 1 order;
# the preset's controls (skew_hippo, skew_hippo_equal, transplant) and methods (bt): reduce and retrain for bt and
# transplant.
JOBS = {
    "download": 3,
    "extract_lra": 1,
    "prepare": 6,
    "train": 30,  # run kinds pretrain 6, train_baseline 6, train_equal_budget 6, retrain 12 (dssbt.grid)
    "reduce": 12,
    "aggregate": 1,
    "plot": 1,
}
# The rules whose jobs ask SLURM for a GPU (the preset's resources.train: gpu 1)
TRAINING = ("train",)
# Counts only: rows (image: the validation images held out of 20), epochs, steps, batch sizes, seeds, orders;
# threads and memory that fit the 2-CPU node (the preset's 32 GB for training exceed it; 8 GB covers a Path-X step
# at batch 1, measured at 4.9 GB peak RSS); the device. Never a model size or a sequence length.
BATCH = {"listops": 2, "text": 2, "retrieval": 2, "image": 2, "pathfinder": 2, "pathx": 1}
OVERRIDES = {
    "seeds": [0],
    "orders": [4],
    "device": "cpu",
    "threads": {"train": 1, "reduce": 1},
    "data": {"image": {"prepare": {"val_size": 4}}},
    "optim": {"epochs": 1, "max_steps_per_epoch": 1},
    "task_settings": {task: {"optim": {"epochs": 1, "batch_size": b}} for task, b in BATCH.items()},
    "resources": {"train": {"mem_mb": 8000, "runtime": 60}},
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def merged(base: dict, override: dict) -> dict:
    """Snakemake's merge of config files: dicts key by key, everything else replaced."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def max_rss_mb(job_id: str) -> float:
    """The largest MaxRSS of a SLURM job's steps (sacct), in MB: sampled every second (cluster.sh's
    JobAcctGatherFrequency), so a lower bound of the peak."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-j", job_id, "-o", "MaxRSS"], capture_output=True, text=True, env=ENV, check=True
    ).stdout.split()
    scale = {"K": 1 / 1024, "M": 1, "G": 1024}
    return max((float(v[:-1]) * scale[v[-1]] if v[-1] in scale else float(v) / 2**20 for v in out if v), default=0)


def alloc_tres(job_id: str) -> str:
    return subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "AllocTRES"],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    ).stdout.strip()


@pytest.fixture(scope="module")
def rehearsal(request, tmp_path_factory):
    """The preset, from download to tables, on the cluster; the fixture archives served over HTTP."""
    request.getfixturevalue("slurm_cluster")  # test_slurm's: up once per session, down at its end
    base = tmp_path_factory.mktemp("rehearsal")
    archives = build_archives(base / "archives")
    (base / "wf").mkdir()
    wf = copy_workflow(base / "wf")
    with Server({f"/{p.name}": p.read_bytes() for p in archives.values()}) as server:
        downloads = {k: {"url": f"{server.url}/{p.name}", "sha256": sha256(p)} for k, p in archives.items()}
        (wf / "rehearsal.yaml").write_text(yaml.safe_dump({**OVERRIDES, "downloads": downloads}))
        args = profile_args("--configfile", "workflow/presets/lra.yaml", "rehearsal.yaml")
        t0 = time.perf_counter()
        p = snakemake(wf, *args, check=False, timeout=1800)
        wall = time.perf_counter() - t0
        requests = [path for path, _ in server.requests]
    out = p.stdout + p.stderr
    jobs = sacct_jobs(run_id(out))
    resources = yaml.safe_load(PRESET.read_text())["resources"]
    report = []
    for j in jobs:
        rule_mem = merged(resources.get("default", {}), resources.get("train", {}) if j["rule"] in TRAINING else {})
        rule_mem = merged(rule_mem, resources.get(j["rule"], {}))
        row = {**j, "max_rss_mb": round(max_rss_mb(j["id"])), "preset_mem_mb": rule_mem.get("mem_mb")}
        if j["rule"] in TRAINING:
            row["alloc_tres"] = alloc_tres(j["id"])
        report.append(row)
    (base / "report.json").write_text(json.dumps({"wall_s": wall, "jobs": report}, indent=1))
    print(f"\nrehearsal: {wall:.0f} s, {len(jobs)} SLURM jobs; peak RSS per job (report: {base / 'report.json'})")
    for r in report:
        rss, mem = r["max_rss_mb"], r["preset_mem_mb"]
        print(f"  {r['rule']:<20} {r['wildcards']:<26} {r['state']:<10} {rss:>6} MB (preset mem_mb {mem})")
    return {"wf": wf, "p": p, "out": out, "jobs": report, "requests": requests, "wall": wall}


def test_rehearsal_of_the_lra_preset_runs_every_stage_through_slurm(rehearsal):
    wf, out = rehearsal["wf"], rehearsal["out"]
    assert rehearsal["p"].returncode == 0, out[-4000:]
    for name in ("tables/accuracy.csv", "plots/accuracy_vs_order.png", "plots/hsv_decay.png"):
        assert (wf / "results" / name).stat().st_size > 0, name
    # every job ran once, as a SLURM job that completed
    assert rule_counts(rehearsal["jobs"]) == JOBS
    assert all(j["state"] == "COMPLETED" for j in rehearsal["jobs"]), [
        j for j in rehearsal["jobs"] if j["state"] != "COMPLETED"
    ]
    # each archive was fetched from the loopback server and verified by the sha256 the config gave
    assert sorted(rehearsal["requests"]) == sorted(
        f"/{n}" for n in ("lra_release.gz", "aclImdb_v1.tar.gz", "cifar-10-python.tar.gz")
    )
    for name in ("lra_release.gz", "aclImdb_v1.tar.gz", "cifar-10-python.tar.gz"):
        assert "downloaded and verified (sha256" in (wf / "logs/download" / f"{name}.log").read_text()
    # the GPU of every training job was allocated by SLURM on the node's GRES
    for j in rehearsal["jobs"]:
        if j["rule"] in TRAINING:
            assert "gres/gpu=1" in j["alloc_tres"], j


def test_the_node_has_gpus_and_schedules_a_gpu_job(request, tmp_path):
    """cluster.sh's GRES: the node is idle with its GPUs, and an `sbatch --gpus=1` job runs with one of them."""
    request.getfixturevalue("slurm_cluster")
    node = subprocess.run(["sinfo", "-h", "-N", "-o", "%T %G"], capture_output=True, text=True, env=ENV, check=True)
    assert node.stdout.split() in (["idle", "gpu:2"], ["mixed", "gpu:2"], ["allocated", "gpu:2"]), node.stdout
    job = subprocess.run(
        ["sbatch", "--wait", "--parsable", "-A", "dssbt", "-p", "debug", "--gpus=1", "--mem=100", "-t", "1"]
        + ["-o", str(tmp_path / "job.out"), "--wrap", "echo gpus $SLURM_JOB_GPUS"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert job.returncode == 0, job.stderr
    assert re.fullmatch(r"gpus [01]\n", (tmp_path / "job.out").read_text())
    assert "gres/gpu=1" in alloc_tres(job.stdout.strip().split(";")[0])


def test_rehearsal_kept_the_presets_sequence_lengths_and_model_sizes(rehearsal):
    wf = rehearsal["wf"]
    assert rehearsal["p"].returncode == 0, rehearsal["out"][-4000:]
    # what the config overrode: counts (and the image's validation rows), never a model section
    assert "model" not in OVERRIDES and all(set(t) == {"optim"} for t in OVERRIDES["task_settings"].values())
    assert OVERRIDES["data"] == {"image": {"prepare": {"val_size": 4}}}
    preset = yaml.safe_load(PRESET.read_text())
    for task, length in LENGTHS.items():
        meta = json.loads((wf / "data/prepared" / task / "meta.json").read_text())
        assert meta["l_max"] == length and meta["dual"] == (task == "retrieval"), (task, meta["l_max"])
        metrics = json.loads((wf / "results/runs" / task / "seed0/pretrain/metrics.json").read_text())
        model = merged(preset["model"], preset["task_settings"][task].get("model", {}))
        assert {k: metrics["hparams"]["model"][k] for k in model} == model, task
        assert metrics["epochs_run"] == 1 and metrics["N"] == preset["model"]["d_state"]
