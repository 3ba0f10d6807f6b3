"""Pathfinder / Path-X: the reader on PNG + metadata fixtures in the official layout (pixels, labels and split
checked by hand), malformed metadata and images; the embedded generator (determinism, balance, and labels
checked against the pixels: positive iff the two markers lie on one connected curve)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from dssbt.data.common import DataError
from dssbt.data.generate import PathfinderConfig, generate_pathfinder, pathfinder_scene, render
from dssbt.data.pathfinder import prepare_pathfinder
from dssbt.data.prepare import prepare_task
from dssbt.data.prepared import load_meta, load_split


def value_of(i: int) -> int:
    return 10 * i + 5


def write_pathfinder(folder: Path, resolution: int = 32, n: int = 20) -> Path:
    """``n`` constant images (image i has value 10 i + 5, label i % 2) in two metadata files, 2.npy and 10.npy
    (numeric order: 2 before 10), nested one folder deeper than in the release, next to a decoy difficulty."""
    top = folder / "lra_release" / f"pathfinder{resolution}"
    root = top / "curv_contour_length_14"
    (root / "metadata").mkdir(parents=True)
    lines = {2: [], 10: []}
    for i in range(n):
        k = 2 if i < n // 2 else 10
        d = root / "imgs" / str(k)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((resolution, resolution), value_of(i), np.uint8), mode="L").save(d / f"sample_{i}.png")
        lines[k].append(f"imgs/{k} sample_{i}.png {i} {i % 2} 2 14 2 2 1 2 1")
    for k, ls in lines.items():
        (root / "metadata" / f"{k}.npy").write_text("\n".join(ls) + "\n")
    decoy = top / "curv_baseline" / "imgs" / "0"  # another difficulty: must be ignored
    decoy.mkdir(parents=True)
    (decoy / "sample_0.png").write_bytes(b"")
    return folder


def check_pathfinder_prepared(splits, meta, n: int = 20, resolution: int = 32):
    """20 images, 10 per label: val and test take int(0.1 n) = 2 each, one per label; train the other 16."""
    L = resolution * resolution
    assert meta["encoder"] == "linear" and meta["d_input"] == 1 and meta["d_output"] == 2 and meta["l_max"] == L
    sizes = {s: len(v) for s, v in splits.items()}
    assert sizes == {"train": n - 2 * (n // 10), "val": n // 10, "test": n // 10}
    seen = []
    for s, split in splits.items():
        split = split.decoded()
        assert split.inputs.dtype == np.float32 and split.inputs.shape == (len(split), L)
        np.testing.assert_array_equal(split.lengths, np.full(len(split), L))
        assert np.bincount(split.labels, minlength=2).tolist() == [len(split) // 2] * 2
        for row, label in zip(split.inputs, split.labels):
            i = int(round(((row[0] * 0.5 + 0.5) * 255 - 5) / 10))  # invert (v/255 - 0.5)/0.5, v = 10 i + 5
            np.testing.assert_allclose(row, (value_of(i) / 255 - 0.5) / 0.5, rtol=1e-6, atol=1e-6)
            assert label == i % 2
            seen.append(i)
    assert sorted(seen) == list(range(n))  # every image in exactly one split


def test_reader_by_hand(tmp_path):
    splits, meta = prepare_pathfinder(write_pathfinder(tmp_path), seed=0)
    check_pathfinder_prepared(splits, meta)
    again, _ = prepare_pathfinder(tmp_path, seed=0)
    other, _ = prepare_pathfinder(tmp_path, seed=1)
    np.testing.assert_array_equal(splits["val"].decoded().inputs, again["val"].decoded().inputs)
    assert any(
        not np.array_equal(splits[s].labels, other[s].labels)
        or not np.array_equal(splits[s].decoded().inputs, other[s].decoded().inputs)
        for s in ("val", "test")
    )
    assert all(splits[s].inputs.dtype == np.uint8 and splits[s].table is not None for s in splits)  # compact


def to_tensor(value: int, L: int, center: bool) -> np.ndarray:
    """The S4 reference's pixels for a constant image: ``ToTensor()`` (float32 / 255), then ``Normalize(0.5, 0.5)``
    when ``center``, written with torch ops."""
    x = torch.full((L,), value, dtype=torch.uint8).to(torch.float32).div(255)
    if center:
        x = x.sub_(torch.as_tensor(0.5)).div_(torch.as_tensor(0.5))
    return x.numpy()


def check_pathfinder_reference_prepared(splits, meta, n: int = 20, resolution: int = 32, center: bool = False):
    """The S4 reference's reading of write_pathfinder: samples in metadata order (image i is sample i), split by
    random_split(dataset, [train, val, test]) with a generator seeded 42, each split in the permutation's order."""
    L = resolution * resolution
    parts = torch.utils.data.random_split(
        range(n), [n - 2 * (n // 10), n // 10, n // 10], generator=torch.Generator().manual_seed(42)
    )
    assert meta["l_max"] == L
    for name, subset in zip(("train", "val", "test"), parts):
        assert splits[name].labels.tolist() == [i % 2 for i in subset.indices]
        x = splits[name].decoded().inputs
        assert x.shape == (len(subset), L)
        for row, i in zip(x, subset.indices):
            assert np.array_equal(row.view(np.uint32), to_tensor(value_of(i), L, center).view(np.uint32)), (name, i)


def test_reference_split_and_pixels_by_hand(tmp_path):
    root = write_pathfinder(tmp_path)
    splits, meta = prepare_pathfinder(root, seed=42, split="reference", pixels="unit")
    check_pathfinder_reference_prepared(splits, meta)
    assert meta["normalisation"] == {"mean": 0.0, "std": 1.0, "scale": 255.0}
    centered, _ = prepare_pathfinder(root, seed=42, split="reference", pixels="centered")
    check_pathfinder_reference_prepared(centered, meta, center=True)
    with pytest.raises(ValueError, match="pixels must be one of"):
        prepare_pathfinder(root, pixels="minus-one")


def test_pixels_keep_row_major_order(tmp_path):
    root = write_pathfinder(tmp_path, n=10)
    r, c = np.mgrid[:32, :32]
    img = ((r * 7 + c) % 256).astype(np.uint8)
    Image.fromarray(img, mode="L").save(root / "lra_release/pathfinder32/curv_contour_length_14/imgs/2/sample_0.png")
    splits, _ = prepare_pathfinder(root, val_fraction=0.0, test_fraction=0.0)
    row = splits["train"].decoded().inputs[0]  # the first metadata line of 2.npy
    np.testing.assert_allclose(row[32 * 5 + 9], (img[5, 9] / 255 - 0.5) / 0.5, rtol=1e-6)
    np.testing.assert_allclose(row.reshape(32, 32), (img / 255 - 0.5) / 0.5, rtol=1e-6, atol=1e-6)


def test_pathx_reads_pathfinder128(tmp_path):
    write_pathfinder(tmp_path, resolution=128, n=20)
    write_pathfinder(tmp_path / "other", resolution=32, n=10)
    splits, meta = prepare_pathfinder(tmp_path, resolution=128, task="pathx")
    assert meta["task"] == "pathx" and meta["l_max"] == 128 * 128
    check_pathfinder_prepared(splits, meta, n=20, resolution=128)


def _meta_file(root: Path, k: int = 2) -> Path:
    return root / "lra_release/pathfinder32/curv_contour_length_14/metadata" / f"{k}.npy"


@pytest.mark.parametrize(
    "case, line, message",
    [
        ("missing image", 3, r"names image imgs/2/sample_99\.png, which does not exist"),
        ("short line", 2, "expected at least 4 fields"),
        ("bad label", 4, "label '2' is not 0 or 1"),
        ("unreadable png", 1, r"image .*sample_0\.png is unreadable"),
        ("wrong size", 1, r"sample_0\.png is 16x16, expected 32x32"),
    ],
)
def test_malformed_input_names_metadata_file_and_line(tmp_path, case, line, message):
    root = write_pathfinder(tmp_path / "in")
    mfile = _meta_file(root)
    lines = mfile.read_text().splitlines()
    img = root / "lra_release/pathfinder32/curv_contour_length_14/imgs/2/sample_0.png"
    if case == "missing image":
        lines[2] = lines[2].replace("sample_2.png", "sample_99.png")
    elif case == "short line":
        lines[1] = "imgs/2 sample_1.png 1"
    elif case == "bad label":
        lines[3] = "imgs/2 sample_3.png 3 2 2 14"
    elif case == "unreadable png":
        img.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif case == "wrong size":
        Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(img)
    mfile.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message) as e:
        prepare_task("pathfinder", "lra", root, out, log=None)
    assert f"metadata/2.npy:{line}:" in str(e.value)
    assert not out.exists()


def test_missing_metadata_folder(tmp_path):
    root = write_pathfinder(tmp_path)
    for p in (root / "lra_release/pathfinder32/curv_contour_length_14/metadata").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match="no metadata"):
        prepare_pathfinder(root)


# ------------------------------------------------------------------------------------------------ the generator


def test_generator_layout_balance_and_reader(tmp_path):
    info = generate_pathfinder(tmp_path / "g", n_samples=40, seed=1, per_folder=16)
    root = tmp_path / "g" / "pathfinder32" / "curv_contour_length_14"
    assert sorted(p.name for p in (root / "metadata").iterdir()) == ["0.npy", "1.npy", "2.npy"]
    assert sorted(p.name for p in (root / "imgs").iterdir()) == ["0", "1", "2"]
    lines = [ln.split() for k in range(3) for ln in (root / "metadata" / f"{k}.npy").read_text().splitlines()]
    assert len(lines) == 40 and [ln[1] for ln in lines] == [f"sample_{j}.png" for j in range(40)]
    assert sum(int(ln[3]) for ln in lines) == 20 and info["label_counts"] == {"all": [20, 20]}
    for ln in lines:
        with Image.open(root / ln[0] / ln[1]) as im:
            assert im.size == (32, 32) and im.mode == "L"
    meta = prepare_task("pathfinder", "embedded", tmp_path / "g", tmp_path / "p", log=None)
    assert meta["sizes"] == {"train": 32, "val": 4, "test": 4}
    assert load_meta(tmp_path / "p")["label_counts"] == {"train": [16, 16], "val": [2, 2], "test": [2, 2]}
    first = np.asarray(Image.open(root / "imgs/0/sample_0.png"), dtype=np.float32)
    rows = np.concatenate([load_split(tmp_path / "p", s).decoded().inputs for s in ("train", "val", "test")])
    assert np.isclose(rows, ((first / 255 - 0.5) / 0.5).reshape(1, -1), atol=1e-6).all(axis=1).sum() == 1


def test_generator_is_deterministic(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        generate_pathfinder(tmp_path / name, n_samples=12, seed=seed, per_folder=5)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 12 + 3 + 1
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)


def test_label_is_whether_the_markers_are_connected_in_the_pixels():
    """With gap 0 the curves are solid; well-separated curves never touch. Then the pixels alone decide the label:
    the two markers are in one 8-connected component iff the label is 1."""
    cfg = PathfinderConfig(contour_length=5, gap=0.0, separation=5.0, n_distractors=1, distractor_length=2)
    rng = np.random.default_rng(0)
    for i in range(60):
        label = i % 2
        curves, markers = pathfinder_scene(rng, label, cfg)
        img = render(curves, markers, cfg)
        comp, _ = ndimage.label(img > 0, structure=np.ones((3, 3)))
        (x0, y0), (x1, y1) = markers
        a, b = comp[int(y0), int(x0)], comp[int(y1), int(x1)]
        assert a > 0 and b > 0
        assert (a == b) == bool(label), i


def test_marker_distance_carries_no_label_information():
    cfg = PathfinderConfig()
    rng = np.random.default_rng(1)
    dist = {y: [np.linalg.norm(np.subtract(*pathfinder_scene(rng, y, cfg)[1])) for _ in range(300)] for y in (0, 1)}
    for q in (10, 50, 90):
        assert abs(np.percentile(dist[0], q) - np.percentile(dist[1], q)) < 1.0


def test_generator_rejects_settings_without_room(tmp_path):
    cfg = PathfinderConfig(contour_length=30, dash_length=3.0, gap=2.0, max_turn=0.0)  # a 150 px line in 32 px
    with pytest.raises(ValueError, match="could not place"):
        generate_pathfinder(tmp_path / "g", n_samples=2, config=cfg)
    assert not (tmp_path / "g").exists()
