"""Peak memory of ``dssbt prepare`` on each real LRA task at its full size, on synthetic data of the real sizes.

    python bench/prepare_memory.py [--quick] [--tasks listops text retrieval image pathfinder pathx] [--plain]

For each task, files in the official layout are generated on the fly in a temporary folder (random tokens,
characters and pixels; only sizes and shapes are real), then one child process imports dssbt, notes its peak RSS
(the baseline: Python, numpy, torch), runs ``prepare_task`` with the LRA preset's options (the S4 reference's
reading) and reports its peak RSS again. Printed per task:

    MEMORY prepare <task>: peak RSS <P> MiB (<P - baseline> MiB above the imports); prepared arrays <C> MiB; one
        int64/float32 copy of the train split would be <W> MiB

and, at full size, ``CHECK prepare <task> stays below one int64/float32 copy of train`` (the increase over the
baseline). Real sizes: ListOps 96,000 / 2,000 / 2,000 sequences (tokens cut at 2048); IMDb 25,000 + 25,000
reviews (4096 characters); AAN 147,086 / 18,090 / 17,437 pairs of two documents (4000 characters each); CIFAR-10
50,000 + 10,000 images; Pathfinder and Path-X 200,000 images each (pathfinder32 / pathfinder128
curv_contour_length_14: 160,000 / 20,000 / 20,000 after the 80/10/10 split). ``--quick``: 1/500 of that (the
suite; figures meaningless, only the output shapes are checked). ``--plain``: the readers' default options
(to compare with an older dssbt put first on PYTHONPATH, which has no reference options).

Last, the time of extracting the four tasks of lra_release.gz (ListOps, Retrieval, Pathfinder, Path-X) in one
pass (``extract_tasks``, the workflow's extract_lra job) against one pass per task (``extract_task``, as each
prepare job did before), on a synthetic gzip tar of the release's layout (``--archive-mb``, default 300):
``RATIO extract one pass vs one pass per task``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
SIZES = {  # examples per file/split of the real data
    "listops": {"train": 96_000, "val": 2_000, "test": 2_000},
    "text": {"train": 25_000, "test": 25_000},
    "retrieval": {"train": 147_086, "eval": 18_090, "test": 17_437},
    "image": {"train": 50_000, "test": 10_000},
    "pathfinder": {"all": 200_000},
    "pathx": {"all": 200_000},
}
OPTIONS = {  # workflow/presets/lra.yaml
    "listops": {"l_max": 2048, "eos": True},
    "text": {"l_max": 4096, "min_count": 15, "eos": True},
    "retrieval": {"l_max": 4000, "eos": True},
    "image": {"normalise": "reference", "split": "reference", "seed": 42},
    "pathfinder": {"pixels": "unit", "split": "reference", "seed": 42},
    "pathx": {"pixels": "unit", "split": "reference", "seed": 42},
}
TRAIN_EXAMPLES = {
    "listops": 96_000,
    "text": 25_000,
    "retrieval": 147_086,
    "image": 45_000,
    "pathfinder": 160_000,
    "pathx": 160_000,
}
# values per train example in the model's form (int64 ids or float32 pixels) at full length
TRAIN_VALUES = {"listops": 2048, "text": 4096, "retrieval": 2 * 4000, "image": 1024, "pathfinder": 1024, "pathx": 16384}


def scaled(sizes: dict[str, int], scale: float) -> dict[str, int]:
    return {k: max(10, int(round(v * scale))) for k, v in sizes.items()}


# ------------------------------------------------------------------------------------------------ generators


def gen_listops(root: Path, sizes: dict[str, int], rng: np.random.Generator) -> None:
    d = root / "listops-1000"
    d.mkdir(parents=True)
    vocab = np.array(["[MAX", "[MIN", "[MED", "[SM", "]", "(", ")"] + [str(i) for i in range(10)])
    for split, n in sizes.items():
        with open(d / f"basic_{split}.tsv", "w") as fh:
            fh.write("Source\tTarget\n")
            for _ in range(n):  # 500..2000 tokens before the parentheses are dropped (real: up to 2000)
                toks = vocab[rng.integers(0, len(vocab), int(rng.integers(500, 2001)))]
                fh.write(f"{' '.join(toks)}\t{int(rng.integers(0, 10))}\n")


def _text_pool(rng: np.random.Generator, size: int = 1 << 24) -> str:
    """Random text: letters, digits, punctuation and a few non-ASCII characters ('~' becomes 'é')."""
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'-()<>/~", np.uint8)
    return letters[rng.integers(0, len(letters), size)].tobytes().decode("ascii").replace("~", "\u00e9")


def gen_text(root: Path, sizes: dict[str, int], rng: np.random.Generator) -> None:
    pool = _text_pool(rng)
    for split, n in sizes.items():
        for c, cls in enumerate(("neg", "pos")):
            d = root / "aclImdb" / split / cls
            d.mkdir(parents=True)
            for i in range(n // 2):  # IMDb review lengths: median ~1000 characters, up to ~14,000
                k = int(min(14_000, max(10, rng.lognormal(6.9, 0.75))))
                s = int(rng.integers(0, len(pool) - k))
                (d / f"{i}_{1 + c * 8}.txt").write_text(pool[s : s + k], encoding="utf-8")


def gen_retrieval(root: Path, sizes: dict[str, int], rng: np.random.Generator) -> None:
    d = root / "tsv_data"
    d.mkdir(parents=True)
    pool = _text_pool(rng).replace("\t", " ")
    for split, n in sizes.items():
        with open(d / f"new_aan_pairs.{split}.tsv", "w", encoding="utf-8") as fh:
            for i in range(n):  # documents of 2,000..8,000 characters: most are cut at 4000
                docs = []
                for _ in range(2):
                    k = int(rng.integers(2000, 8001))
                    s = int(rng.integers(0, len(pool) - k))
                    docs.append(pool[s : s + k])
                fh.write(f"{float(i % 2)}\taan/{i}a\taan/{i}b\t{docs[0]}\t{docs[1]}\n")


def gen_image(root: Path, sizes: dict[str, int], rng: np.random.Generator) -> None:
    """CIFAR-10 python batches; protocol 4 stores the pixels as raw bytes, as the real (Python 2) pickles read
    with encoding="bytes" do (protocol 2 from Python 3 would route them through a latin-1 str: 2 extra copies)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    n_train = sizes["train"]
    bounds = np.linspace(0, n_train, 6).astype(int)
    for i in range(5):
        n = int(bounds[i + 1] - bounds[i])
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        (d / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch, protocol=4))
    n = sizes["test"]
    (d / "test_batch").write_bytes(
        pickle.dumps(
            {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()},
            protocol=4,
        )
    )


def gen_pathfinder(root: Path, sizes: dict[str, int], rng: np.random.Generator, res: int) -> None:
    """Metadata files of 1000 lines and image folders as the release; the PNGs are copies of 64 distinct sparse
    random images (decoding cost and pixel statistics like the real ones; generation fast)."""
    import io

    from PIL import Image

    contour = root / f"pathfinder{res}" / "curv_contour_length_14"
    (contour / "metadata").mkdir(parents=True)
    pngs = []
    for _ in range(64):
        img = np.where(rng.random((res, res)) < 0.08, rng.integers(100, 256, (res, res)), 0).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, format="PNG")
        pngs.append(buf.getvalue())
    n = sizes["all"]
    for k in range((n + 999) // 1000):
        d = contour / "imgs" / str(k)
        d.mkdir(parents=True)
        lines = []
        for j in range(k * 1000, min(n, (k + 1) * 1000)):
            (d / f"sample_{j}.png").write_bytes(pngs[j % 64])
            lines.append(f"imgs/{k} sample_{j}.png {j} {int(rng.integers(0, 2))} 2 14 2 2 1 2 1")
        (contour / "metadata" / f"{k}.npy").write_text("\n".join(lines) + "\n")


def generate(task: str, root: Path, sizes: dict[str, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    if task in ("pathfinder", "pathx"):
        gen_pathfinder(root, sizes, rng, 32 if task == "pathfinder" else 128)
    else:
        {"listops": gen_listops, "text": gen_text, "retrieval": gen_retrieval, "image": gen_image}[task](
            root, sizes, rng
        )


# ------------------------------------------------------------------------------------------------- measuring

# VmHWM (this process's own peak RSS), not getrusage's ru_maxrss: Linux carries a forked child's maxrss (the
# parent's RSS at fork) across exec.
CHILD = r"""
import json, sys, time
import numpy, torch
import dssbt.data.prepare as P
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
base = hwm()
task, folder, out, opts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
t = time.perf_counter()
meta = P.prepare_task(task, "lra", folder, out, log=None, **{k: v for k, v in opts.items() if v is not None})
wall = time.perf_counter() - t
peak = hwm()
print(json.dumps({"base_kib": base, "peak_kib": peak, "wall_s": wall, "sizes": meta["sizes"],
                  "l_max": meta["l_max"]}))
"""


def measure(task: str, folder: Path, out: Path, opts: dict) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", CHILD, task, str(folder), str(out), json.dumps(opts)], capture_output=True, text=True
    )
    if p.returncode != 0:
        raise RuntimeError(f"prepare {task} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def prepared_mib(out: Path) -> float:
    total = 0
    for s in ("train", "val", "test"):
        with np.load(out / f"{s}.npz") as z:
            total += z["inputs"].nbytes
    return total / 2**20


# -------------------------------------------------------------------------------- one pass over lra_release.gz

PNG_BYTES = {32: 250, 64: 700, 128: 2500, 256: 8000}  # typical PNG sizes of the release's images
DIFFICULTIES = ("curv_baseline", "curv_contour_length_9", "curv_contour_length_14")


def build_release(path: Path, target_mb: float, rng: np.random.Generator) -> dict:
    """A gzip tar in the layout of lra_release.gz: lra_release/listops-1000/, lra_release/lra_release/tsv_data/,
    lra_release/pathfinder{32,64,128,256}/{3 difficulties}/{metadata,imgs}; PNG members of random bytes (PNGs
    do not compress further), text members of random text. Returns its size and member count."""
    import io
    import tarfile

    per_image = sum(PNG_BYTES.values()) * len(DIFFICULTIES)
    n_img = max(20, int(target_mb * 0.8 * 2**20 / per_image))  # 80 % images, the rest text
    text = _text_pool(rng, int(target_mb * 0.2 * 2**20)).replace("\t", " ").encode()
    members = 0

    def add(tar, name, data):
        nonlocal members
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        members += 1

    with tarfile.open(path, "w:gz", compresslevel=6) as tar:
        third = len(text) // 6
        for i, s in enumerate(("train", "val", "test")):
            add(tar, f"lra_release/listops-1000/basic_{s}.tsv", text[i * third : (i + 1) * third])
        for i, s in enumerate(("train", "eval", "test")):
            add(tar, f"lra_release/lra_release/tsv_data/new_aan_pairs.{s}.tsv", text[(3 + i) * third : (4 + i) * third])
        for res, size in PNG_BYTES.items():
            for diff in DIFFICULTIES:
                base = f"lra_release/pathfinder{res}/{diff}"
                for k in range((n_img + 999) // 1000):
                    lines = []
                    for j in range(k * 1000, min(n_img, (k + 1) * 1000)):
                        add(tar, f"{base}/imgs/{k}/sample_{j}.png", rng.bytes(size))
                        lines.append(f"imgs/{k} sample_{j}.png {j} {j % 2} 2 14")
                    add(tar, f"{base}/metadata/{k}.npy", ("\n".join(lines) + "\n").encode())
    return {"mib": path.stat().st_size / 2**20, "members": members, "images_per_difficulty": n_img}


def bench_extract(tmp: Path, target_mb: float) -> bool:
    """One extract_task pass per task (the former prepare jobs) against one extract_tasks pass (rule
    extract_lra), on the same archive, side by side in this process."""
    from dssbt.data.download import extract_task, extract_tasks

    tasks = ("listops", "retrieval", "pathfinder", "pathx")
    archive = tmp / "lra_release.gz"
    t = time.perf_counter()
    info = build_release(archive, target_mb, np.random.default_rng(1))
    print(
        f"synthetic lra_release.gz: {info['mib']:.0f} MiB, {info['members']} members, "
        f"{info['images_per_difficulty']} images per resolution and difficulty (built in "
        f"{time.perf_counter() - t:.0f} s)",
        flush=True,
    )
    t = time.perf_counter()
    for task in tasks:
        extract_task(archive, task, tmp / "per_task" / task, log=None)
    per_task = time.perf_counter() - t
    t = time.perf_counter()
    extract_tasks(archive, {task: tmp / "one_pass" / task for task in tasks}, log=None)
    one_pass = time.perf_counter() - t
    print(
        f"RATIO extract one pass vs one pass per task ({len(tasks)} tasks, {info['mib']:.0f} MiB archive): "
        f"{per_task / one_pass:.2f}x ({per_task:.1f} s -> {one_pass:.1f} s)",
        flush=True,
    )
    same = all(
        sorted(p.relative_to(tmp / "per_task" / t) for p in (tmp / "per_task" / t).rglob("*"))
        == sorted(p.relative_to(tmp / "one_pass" / t) for p in (tmp / "one_pass" / t).rglob("*"))
        for t in tasks
    )
    return check("prepare_memory one pass extracts what the per-task passes extract", same, f"{len(tasks)} tasks")


def check(name: str, ok: bool, detail: str) -> bool:
    print(f"CHECK {name}: {'ok' if ok else 'FAIL'} ({detail})", flush=True)
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1/500 of the real sizes (for the test suite)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--plain", action="store_true", help="the readers' default options, not the LRA preset's")
    ap.add_argument("--tmp", default=None, help="folder for the synthetic data (default: the system's temp)")
    ap.add_argument(
        "--archive-mb",
        type=float,
        default=None,
        help="size of the synthetic lra_release.gz for the extraction timing (default 300; --quick 4)",
    )
    a = ap.parse_args()
    scale = 1 / 500 if a.quick else 1.0
    ok = True
    for task in a.tasks:
        sizes = scaled(SIZES[task], scale)
        with tempfile.TemporaryDirectory(dir=a.tmp, prefix=f"prepmem-{task}-") as tmp:
            tmp = Path(tmp)
            t = time.perf_counter()
            generate(task, tmp / "in", sizes)
            gen_s = time.perf_counter() - t
            opts = {} if a.plain else dict(OPTIONS[task])
            if task == "image":
                opts["val_size"] = max(1, sizes["train"] // 10)
            r = measure(task, tmp / "in", tmp / "out", opts)
            compact = prepared_mib(tmp / "out")
            n_train = int(round(TRAIN_EXAMPLES[task] * scale)) if a.quick else TRAIN_EXAMPLES[task]
            wide = n_train * TRAIN_VALUES[task] * (8 if task in ("listops", "text", "retrieval") else 4) / 2**20
            peak, base = r["peak_kib"] / 1024, r["base_kib"] / 1024
            kind = "int64" if task in ("listops", "text", "retrieval") else "float32"
            print(
                f"MEMORY prepare {task}: peak RSS {peak:.0f} MiB ({peak - base:.0f} MiB above the imports); "
                f"prepared arrays {compact:.0f} MiB; one {kind} copy of the train split would be {wide:.0f} MiB "
                f"(sizes {r['sizes']}, L={r['l_max']}; generated in {gen_s:.0f} s, prepared in "
                f"{r['wall_s']:.0f} s)",
                flush=True,
            )
            if task in ("pathfinder", "pathx"):
                n = sizes["all"]
                want = {"train": n - 2 * int(0.1 * n), "val": int(0.1 * n), "test": int(0.1 * n)}
            elif task == "image":
                want = {"train": sizes["train"] - opts["val_size"], "val": opts["val_size"], "test": sizes["test"]}
            elif task == "text":
                want = {"train": sizes["train"], "val": sizes["test"], "test": sizes["test"]}
            else:
                want = dict(zip(("train", "val", "test"), sizes.values()))
            ok &= check(f"prepare_memory {task} sizes are the generated ones", r["sizes"] == want, f"{r['sizes']}")
            if not a.quick:
                ok &= check(
                    f"prepare_memory {task} stays below one {kind} copy of train",
                    peak - base < wide,
                    f"{peak - base:.0f} MiB above the imports vs {wide:.0f} MiB",
                )
    with tempfile.TemporaryDirectory(dir=a.tmp, prefix="prepmem-extract-") as tmp:
        ok &= bench_extract(Path(tmp), a.archive_mb or (4.0 if a.quick else 300.0))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
