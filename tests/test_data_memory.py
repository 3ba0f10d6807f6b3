"""Preparing never builds a whole split as int64 ids or float32 pixels: the peak of traced allocations
(tracemalloc sees numpy's buffers) while preparing scaled-down Retrieval and Path-X stays below the size of ONE
such copy of the train split, and close to the compact output itself."""

import tracemalloc

import numpy as np
import torch  # noqa: F401  (imported before tracing: the lazy import in random_split is no data)
from PIL import Image

from dssbt.data.pathfinder import prepare_pathfinder
from dssbt.data.retrieval import prepare_retrieval


def traced_peak(fn, *args, **kw):
    tracemalloc.start()
    try:
        out = fn(*args, **kw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak


def write_aan(folder, sizes, length, seed=0):
    rng = np.random.default_rng(seed)
    d = folder / "tsv_data"
    d.mkdir(parents=True)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", np.uint8)
    for name, n in sizes.items():
        with open(d / f"new_aan_pairs.{name}.tsv", "w") as fh:
            for i in range(n):
                a, b = (letters[rng.integers(0, len(letters), length + 50)].tobytes().decode() for _ in range(2))
                fh.write(f"{i % 2}.0\tid{i}\tjd{i}\t{a}\t{b}\n")  # documents longer than l_max: cut
    return folder


def test_retrieval_prepares_without_an_int64_split(tmp_path):
    l_max, sizes = 512, {"train": 2000, "eval": 200, "test": 200}
    root = write_aan(tmp_path, sizes, l_max)
    (splits, meta), peak = traced_peak(prepare_retrieval, root, l_max=l_max, eos=True)
    assert splits["train"].inputs.shape == (2000, 2, l_max) and splits["train"].inputs.dtype == np.uint8
    assert (splits["train"].inputs[:, :, l_max - 1] == 2).all()  # <eos> closes every (cut) document
    compact = sum(s.inputs.nbytes for s in splits.values())
    int64_train = splits["train"].inputs.size * 8
    bound = 1.5 * compact + (1 << 20)
    assert bound < int64_train  # the bound is meaningful: one int64 copy of train would exceed it
    assert peak < bound, f"peak {peak / 2**20:.1f} MiB, compact output {compact / 2**20:.1f} MiB"


def write_pathx(folder, n, res=128, seed=0):
    root = folder / "pathfinder128" / "curv_contour_length_14"
    (root / "metadata").mkdir(parents=True)
    (root / "imgs" / "0").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        img = (rng.random((res, res)) < 0.1).astype(np.uint8) * 255  # sparse curves: few distinct values
        Image.fromarray(img, mode="L").save(root / "imgs" / "0" / f"sample_{i}.png")
        lines.append(f"imgs/0 sample_{i}.png {i} {i % 2} 2 14")
    (root / "metadata" / "0.npy").write_text("\n".join(lines) + "\n")
    return folder


def test_pathx_prepares_without_a_float32_split(tmp_path):
    root = write_pathx(tmp_path, 200)
    (splits, meta), peak = traced_peak(
        prepare_pathfinder, root, resolution=128, task="pathx", seed=42, split="reference", pixels="unit"
    )
    assert splits["train"].inputs.shape == (160, 128 * 128) and splits["train"].inputs.dtype == np.uint8
    compact = sum(s.inputs.nbytes for s in splits.values())
    float32_train = splits["train"].inputs.size * 4
    bound = 1.5 * compact + (1 << 20)
    assert bound < float32_train
    assert peak < bound, f"peak {peak / 2**20:.1f} MiB, compact output {compact / 2**20:.1f} MiB"
