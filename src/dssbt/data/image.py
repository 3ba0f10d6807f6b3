"""Image (CIFAR-10, grayscale): the python pickle batches -> prepared pixel sequences of length 1024.

File format (``cifar-10-python.tar.gz``): ``cifar-10-batches-py/data_batch_{1..5}`` and ``test_batch``, pickles
of a dict with ``b"data"`` (uint8 (n, 3072): the red, green, blue 32x32 planes row-major) and ``b"labels"``
(n ints 0..9). Files are unpickled with a restricted unpickler that only admits numpy arrays.
Preprocessing: grayscale with PIL's ITU-R 601-2 luma (what ``torchvision.transforms.Grayscale`` does to a PIL
image: ``(19595 R + 38470 G + 7471 B + 2**15) >> 16``), flattened row-major to 1024 steps, scaled to [0, 1], then
normalised (option ``normalise``):

- ``reference``: the S4 reference's fixed constants (``CIFAR10`` with ``grayscale: true``:
  ``Normalize(mean=122.6/255, std=61.0/255)`` after ``ToTensor``), in float32 as torchvision computes it;
- ``train`` (default, kept for the embedded task): mean and standard deviation of all train-split pixels (computed
  on a float64 copy of the train pixels, as before, so earlier prepared files stay byte-for-byte the same).

The 50,000 training images are split into train / val (``val_size`` = 5,000: 45k/5k; option ``split``):

- ``reference``: the S4 reference's ``split_train_val``: ``torch.utils.data.random_split`` of the 50,000 (in batch
  order) into (45,000, 5,000) with ``torch.Generator().manual_seed(seed)``, seed 42 there; unstratified; the
  splits keep the permutation's order;
- ``stratified`` (default): class-stratified, drawn with numpy and ``seed``, indices sorted.

test = ``test_batch``. Pixels stay uint8 until stored as codes + table (:mod:`.prepared`): no float32 split.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .common import DataError, find_unique, random_split, split_stats, stratified_split
from .prepared import Split, code_table, pixel_codes_inplace

D_OUTPUT = 10
SIDE = 32
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
NORMALISE = ("train", "reference")
SPLIT = ("stratified", "reference")
REFERENCE_MEAN, REFERENCE_STD = 122.6 / 255.0, 61.0 / 255.0  # state-spaces/s4 src/dataloaders/basic.py, CIFAR10


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # ndarray's own pickling names its reconstructor (numpy.core.multiarray._reconstruct before numpy 2,
    # numpy._core.multiarray._reconstruct from 2.0): take the function from there, on any numpy version.
    reconstruct = np.zeros(0).__reduce__()[0]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a CIFAR batch)")
        return obj


def load_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (data uint8 (n, 3072), labels int64 (n,)). Malformed file: DataError."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = _NumpyOnlyUnpickler(fh, encoding="bytes").load()
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror or e})") from None
    except Exception as e:  # truncated or foreign pickle
        raise DataError(path, f"not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(path, f"expected a dict with b'data' and b'labels', got {keys}")
    data, labels = obj[b"data"], obj[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE**2:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(path, f"b'data' must be uint8 (n, {3 * SIDE**2}), got {desc}")
    try:
        labels = np.asarray(labels)
        bad = labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer)
    except Exception:
        bad = True
    if bad:
        raise DataError(path, "b'labels' must be a list of integers")
    if len(labels) != len(data):
        raise DataError(path, f"{len(data)} images but {len(labels)} labels")
    out = np.flatnonzero((labels < 0) | (labels >= D_OUTPUT))
    if len(out):
        raise DataError(path, f"label {int(labels[out[0]])} of image {int(out[0])} outside 0..{D_OUTPUT - 1}")
    return data, labels.astype(np.int64)


def grayscale(data: np.ndarray) -> np.ndarray:
    """uint8 (n, 3072) RGB planes -> uint8 (n, 1024) luma, exactly as PIL's ``convert("L")``."""
    out = np.empty((len(data), SIDE * SIDE), dtype=np.uint8)  # (n, 1024)
    for i in range(0, len(data), 1024):  # in chunks: bounded temporaries (uint32 suffices: < 2**24 + 2**15)
        rgb = data[i : i + 1024].reshape(-1, 3, SIDE * SIDE).astype(np.uint32)  # (b, 3, 1024)
        out[i : i + 1024] = (19595 * rgb[:, 0] + 38470 * rgb[:, 1] + 7471 * rgb[:, 2] + 32768) >> 16
    return out


def read_cifar(root: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``cifar-10-batches-py`` found under ``root`` -> {"train": (gray, labels), "test": (gray, labels)}: gray
    uint8 (n, 1024) (:func:`grayscale`), labels int64 (n,); train = data_batch_1..5 in order (as torchvision's
    CIFAR10). Each batch is turned to grayscale as it is read: memory holds one RGB batch, never all 50,000."""
    base = find_unique(root, "cifar-10-batches-py", dirs=True)
    parts = []
    for name in TRAIN_FILES + [TEST_FILE]:
        if not (base / name).is_file():
            raise ValueError(f"{base / name}: missing (CIFAR-10 python layout: data_batch_1..5, test_batch)")
    for name in TRAIN_FILES + [TEST_FILE]:
        data, labels = load_batch(base / name)
        parts.append((grayscale(data), labels))
        del data
    train = (np.concatenate([g for g, _ in parts[:-1]]), np.concatenate([y for _, y in parts[:-1]]))
    return {"train": train, "test": parts[-1]}


def reference_normalise(values: np.ndarray) -> np.ndarray:
    """uint8 pixel values -> float32, as the S4 reference's ``ToTensor()`` then ``Normalize(122.6/255, 61/255)``:
    ``(v / 255 - float32(122.6/255)) / float32(61/255)``, every step in float32."""
    x = values.astype(np.float32) / np.float32(255)
    return (x - np.float32(REFERENCE_MEAN)) / np.float32(REFERENCE_STD)


def prepare_image(
    root: str | os.PathLike, *, val_size: int = 5000, seed: int = 0, normalise: str = "train", split: str = "stratified"
) -> tuple[dict[str, Split], dict[str, Any]]:
    """Read CIFAR-10 batches under ``root``; returns (splits, meta): inputs uint8 codes (n, 1024) with ``table``
    (float32 (256,), the normalised value of each code), lengths all 1024, labels int64 (n,)."""
    if normalise not in NORMALISE:
        raise ValueError(f"normalise must be one of {NORMALISE}, got {normalise!r}")
    if split not in SPLIT:
        raise ValueError(f"split must be one of {SPLIT}, got {split!r}")
    raw = read_cifar(root)
    g_all, y_all = raw["train"]  # uint8 (50000, 1024) grayscale
    if not 0 < val_size < len(y_all):
        raise ValueError(
            f"val_size must be in 1..{len(y_all) - 1} (the training batches hold {len(y_all)}), got {val_size}"
        )
    if split == "reference":
        idx = random_split(len(y_all), {"train": len(y_all) - val_size, "val": val_size}, seed)
    else:
        idx = stratified_split(y_all, {"val": val_size}, seed)
    gray = {"train": g_all[idx["train"]], "val": g_all[idx["val"]], "test": raw["test"][0]}  # uint8 (n, 1024)
    del g_all
    labels = {"train": y_all[idx["train"]], "val": y_all[idx["val"]], "test": raw["test"][1]}
    if normalise == "reference":
        mean, std = REFERENCE_MEAN, REFERENCE_STD
        f = reference_normalise
    else:
        scaled = gray["train"].astype(np.float64) / 255.0
        mean, std = float(scaled.mean()), float(scaled.std())
        del scaled
        if std == 0:
            std = 1.0
        f = lambda v: ((v.astype(np.float64) / 255.0 - mean) / std).astype(np.float32)  # noqa: E731
    splits = {}
    for s, g in gray.items():  # codes in place of the pixels: the float32 split is never built
        table = code_table(pixel_codes_inplace(g), f)
        splits[s] = Split(inputs=g, lengths=np.full(len(g), SIDE * SIDE, dtype=np.int64), labels=labels[s], table=table)
    val_text = (
        f"{val_size} of the training batches, class-stratified, seed {seed}"
        if split == "stratified"
        else f"torch random_split of the training batches into ({len(y_all) - val_size}, {val_size}), "
        f"generator seed {seed}, unstratified (S4 reference)"
    )
    norm_text = (
        "(x/255 - mean)/std with train-split pixel statistics"
        if normalise == "train"
        else "(x/255 - 122.6/255)/(61.0/255) in float32, the S4 reference's fixed constants"
    )
    meta = {
        "task": "image",
        "encoder": "linear",
        "d_input": 1,
        "d_output": D_OUTPUT,
        "l_max": SIDE * SIDE,
        "dual": False,
        "vocab": None,
        "normalisation": {"mean": mean, "std": std, "scale": 255.0},
        "preprocessing": {
            "grayscale": "PIL ITU-R 601-2 luma (19595R+38470G+7471B+32768)>>16",
            "normalise": norm_text,
            "order": "row-major",
            "val": val_text,
        },
        **split_stats(splits, D_OUTPUT),
    }
    return splits, meta
