import json
import subprocess
import sys

import numpy as np
from test_model import small_model

from dssbt.checkpoint import load_model, save_model


def run(*args):
    return subprocess.run([sys.executable, "-m", "dssbt", *args], capture_output=True, text=True)


def test_reduce_command_writes_model_and_report(tmp_path):
    model = small_model()
    save_model(tmp_path / "pre.pt", model, {"l_max": 64})
    out, rep = tmp_path / "r4.pt", tmp_path / "r4.json"
    p = run("reduce", "--checkpoint", str(tmp_path / "pre.pt"), "--order", "4", "--out", str(out), "--report", str(rep))
    assert p.returncode == 0, p.stderr
    reduced, meta = load_model(out)
    assert reduced.cfg.d_state == 4
    assert meta["reduction"] == {"method": "bt", "route": "discrete", "r": 4, "layer_orders": [4, 4], "order_spec": "4"}
    report = json.loads(rep.read_text())
    assert report["kernel_length"] == 64 and report["r"] == 4 and len(report["layers"]) == 2
    layer = report["layers"][0]
    assert np.asarray(layer["hsv"]).shape == (1, 6, 12)
    assert np.asarray(layer["rel_kernel_error"]).shape == (1, 6)
    hsv = np.asarray(layer["hsv"])
    np.testing.assert_allclose(layer["bound"], 2 * hsv[..., 4:].sum(-1), rtol=1e-12)


def test_reduce_command_rejects_order_at_least_n_and_writes_nothing(tmp_path):
    save_model(tmp_path / "pre.pt", small_model(), {"l_max": 64})
    out, rep = tmp_path / "r.pt", tmp_path / "r.json"
    p = run(
        "reduce", "--checkpoint", str(tmp_path / "pre.pt"), "--order", "12", "--out", str(out), "--report", str(rep)
    )
    assert p.returncode == 2
    assert "1 <= r < N = 12, got r=12" in p.stderr
    assert not out.exists() and not rep.exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["pre.pt"]  # no temporary left behind


def test_reduce_command_needs_a_kernel_length(tmp_path):
    save_model(tmp_path / "pre.pt", small_model())
    p = run(
        "reduce",
        "--checkpoint",
        str(tmp_path / "pre.pt"),
        "--order",
        "2",
        "--out",
        str(tmp_path / "o.pt"),
        "--report",
        str(tmp_path / "o.json"),
    )
    assert p.returncode == 2 and "pass --kernel-length" in p.stderr


def test_a_job_limits_numpy_blas_to_its_threads(monkeypatch):
    from threadpoolctl import threadpool_info

    from dssbt import cli

    seen = []
    monkeypatch.setattr(
        cli,
        "cmd_orders",
        lambda args: seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"),
    )
    assert cli.main(["orders", "--checkpoint", "x", "--spec", "tol:0.1", "--out", "y", "--threads", "1"]) == 0
    assert seen and set(seen) == {1}
