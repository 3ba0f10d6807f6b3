"""The deploy table (one row per exported model) and the accuracy-vs-latency plot with its Pareto front."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ..io import atomic_path

INIT_NAMES = {
    "pretrain": "full N (pretrained)",
    "skew_hippo": "Skew-HiPPO",
    "bt_init": "BT-init",
    "bsp_init": "BSP-init",
    "modal_init": "Modal-init",
    "h2_init": "H2-init",
}


def init_of(run: str) -> str:
    """Run folder -> the init it stands for: pretrain, skew_hippo_r8 -> skew_hippo, bt_init_rtol0.1 -> bt_init."""
    return run if run == "pretrain" else run.rsplit("_r", 1)[0]


def read_rows(paths: list[str | os.PathLike]) -> pd.DataFrame:
    """The rows written by ``dssbt deploy-measure``, flattened: one per model."""
    rows = []
    for p in paths:
        r = json.loads(Path(p).read_text())
        run = r.get("run") or Path(p).parent.name
        init = init_of(run)
        rows.append(
            {
                "task": r["task"],
                "seed": r["seed"],
                "run": run,
                "init": INIT_NAMES.get(init, init),
                "order": r.get("order_spec") or str(r["order"]),
                "layer_orders": "/".join(map(str, r["layer_orders"])),
                "weights": r.get("weights", "fp32"),
                "model_bytes": r.get("model_bytes"),
                "onnx_kib": r["onnx_bytes"] / 1024,
                "state_bytes": r["state_bytes"],
                "latency_onnxruntime_us": r["latency_us"]["onnxruntime"],
                "latency_torch_fused_us": r["latency_us"]["torch_fused"],
                "latency_torch_step_us": r["latency_us"]["torch_step"],
                "accuracy_test": r["accuracy_test"],
                "onnx_accuracy_subset": r["onnx_accuracy_subset"],
                "onnx_torch_agreement": r["onnx_torch_agreement"],
                "subset": r["subset"],
            }
        )
    return pd.DataFrame(rows).sort_values(["task", "seed", "latency_onnxruntime_us"]).reset_index(drop=True)


def _point_label(order: str, weights: str) -> str:
    return order if weights == "fp32" else f"{order} {weights}"


def pareto(points: pd.DataFrame, x: str, y: str) -> pd.Series:
    """True for the points no other point beats on both (lower ``x`` and higher ``y``, one of them strictly)."""
    keep = []
    for _, p in points.iterrows():
        dominated = ((points[x] <= p[x]) & (points[y] >= p[y]) & ((points[x] < p[x]) | (points[y] > p[y]))).any()
        keep.append(not dominated)
    return pd.Series(keep, index=points.index)


def write_deploy_table(
    rows: list[str | os.PathLike],
    csv: str | os.PathLike,
    md: str | os.PathLike,
    plot: str | os.PathLike,
    dpi: int = 150,
) -> pd.DataFrame:
    """Write the CSV (every model), the markdown table and the plot (one point per task x init x order, the mean
    over seeds, Pareto front per task marked). Returns the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = read_rows(rows)
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    cols = {
        "task": "task",
        "seed": "seed",
        "init": "init",
        "order": "order",
        "layer_orders": "states per layer",
        "weights": "weights",
        "model_bytes": "parameter bytes",
        "latency_onnxruntime_us": "µs/token (onnxruntime)",
        "latency_torch_fused_us": "µs/token (torch fused)",
        "latency_torch_step_us": "µs/token (S4Model.step)",
        "onnx_kib": "ONNX KiB",
        "state_bytes": "state bytes/sequence",
        "accuracy_test": "test accuracy",
        "onnx_accuracy_subset": "ONNX accuracy (subset)",
        "subset": "subset",
    }
    lines = ["| " + " | ".join(cols.values()) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for k in cols:
            v = r[k]
            cells.append(
                f"{v:.4f}"
                if k.startswith(("accuracy", "onnx_acc")) and v is not None and v == v
                else f"{v:.1f}"
                if isinstance(v, float)
                else str(v)
            )
        lines.append("| " + " | ".join(cells) + " |")
    with atomic_path(md) as tmp:
        tmp.write_text("\n".join(lines) + "\n")

    df = df.assign(point=[_point_label(o, w) for o, w in zip(df["order"], df["weights"])])
    mean = df.groupby(["task", "init", "point"], as_index=False).agg(
        latency=("latency_onnxruntime_us", "median"), accuracy=("accuracy_test", "mean")
    )
    tasks = sorted(mean["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = mean[mean["task"] == task].copy()
        for init, g in sub.groupby("init"):
            ax.scatter(g["latency"], g["accuracy"], label=init, s=30)
            for _, p in g.iterrows():
                ax.annotate(
                    p["point"], (p["latency"], p["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        front = sub[pareto(sub, "latency", "accuracy")].sort_values("latency")
        ax.step(front["latency"], front["accuracy"], where="post", color="k", lw=1, alpha=0.6, label="Pareto front")
        ax.scatter(front["latency"], front["accuracy"], facecolors="none", edgecolors="k", s=90)
        ax.set_title(task)
        ax.set_xlabel("µs per token, batch 1 (onnxruntime, 1 thread)")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(plot) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(plot).suffix.lstrip(".") or "png")
    plt.close(fig)
    return df
