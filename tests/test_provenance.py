"""Every metrics file records where it came from; a table mixing code or machines says so."""

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import HP, make_task

from dssbt.provenance import mixed_provenance
from dssbt.train import train

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prov")
    task = make_task(tmp / "task")
    hp = copy.deepcopy(HP)
    hp["optim"]["epochs"] = 1
    train(task, hp, "skew_hippo", 0, tmp / "pre", log=lambda s: None)
    return task, hp, tmp


def test_training_and_reduce_metrics_record_code_packages_machine_and_device(trained):
    task, hp, tmp = trained
    p = subprocess.run(
        [sys.executable, "-m", "dssbt", "reduce", "--model", str(tmp / "pre" / "model.pt"), "--order", "3"]
        + ["--data", str(task), "--hparams", json.dumps(hp), "--out", str(tmp / "r.pt"), "--report"]
        + [str(tmp / "r.json"), "--metrics-out", str(tmp / "r_metrics.json"), "--threads", "1"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    for path in (tmp / "pre" / "metrics.json", tmp / "r_metrics.json"):
        prov = json.loads(path.read_text())["provenance"]
        assert set(prov) == {"code", "packages", "machine", "device"}, path
        if (ROOT / ".git").exists():  # a checkout: the commit git itself reports, and the hash of its diff
            assert prov["code"]["commit"] == git("rev-parse", "HEAD").strip()
            diff = subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD", "--", "src"], capture_output=True).stdout
            assert prov["code"]["dirty"] == (hashlib.sha256(diff).hexdigest()[:16] if diff else None)
        assert prov["packages"]["torch"] == torch.__version__
        assert prov["packages"]["numpy"] == np.__version__
        assert prov["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
        assert all(f in flags for f in prov["machine"]["vector_extensions"])
        assert prov["device"] == {"name": "cpu", "gpu": None, "threads": json.loads(path.read_text())["threads"]}
    assert json.loads((tmp / "r_metrics.json").read_text())["provenance"]["device"]["threads"] == 1


def _with(m: dict, section: str, key: str, value) -> dict:
    out = copy.deepcopy(m)
    out["provenance"][section][key] = value
    return out


def test_mixed_provenance_names_what_differs(trained):
    _, _, tmp = trained
    m = json.loads((tmp / "pre" / "metrics.json").read_text())
    assert mixed_provenance([m, m]) is None
    other_cpu = _with(
        m, "machine", "cpu_capability", "AVX2" if m["provenance"]["machine"]["cpu_capability"] != "AVX2" else "AVX512"
    )
    msg = mixed_provenance([m, m, other_cpu])
    assert "CPU kernels" in msg and "(2 runs)" in msg and "(1 runs)" in msg and "commit" not in msg
    other_code = _with(m, "code", "commit", "0" * 40)
    assert "commit" in mixed_provenance([m, other_code])
    legacy = {k: v for k, v in m.items() if k != "provenance"}
    assert "unrecorded" in mixed_provenance([m, legacy])


def test_aggregate_warns_when_a_table_mixes_machines(trained, tmp_path, capsys):
    from dssbt.aggregate import write_tables

    _, _, tmp = trained
    m = json.loads((tmp / "pre" / "metrics.json").read_text())
    files = []
    for seed, cap in ((0, "AVX512"), (1, "AVX2")):
        run = tmp_path / "results/runs/tiny" / f"seed{seed}" / "pretrain"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps(_with(m | {"seed": seed}, "machine", "cpu_capability", cap)))
        files.append(run / "metrics.json")
    t = {k: tmp_path / f"t.{k}" for k in ("runs", "csv", "md", "tex")}
    write_tables(files, t["runs"], t["csv"], t["md"], t["tex"])
    err = capsys.readouterr().err
    assert (
        "warning: these runs differ in code or machine" in err and "CPU kernels AVX512 (1 runs), AVX2 (1 runs)" in err
    )
    assert "CPU kernels" in t["md"].read_text() and "CPU kernels" in t["tex"].read_text()
    # the same runs from one machine: no warning
    for f in files:
        f.write_text(json.dumps(_with(json.loads(f.read_text()), "machine", "cpu_capability", "AVX2")))
    write_tables(files, t["runs"], t["csv"], t["md"], t["tex"])
    assert "warning" not in capsys.readouterr().err and "CPU kernels" not in t["md"].read_text()
