"""The data subcommands end to end: embedded tasks generated and prepared offline; the same ``prepare`` command on
fixture archives in the official layouts (source lra) gives the same prepared form, checked by hand."""

import argparse
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from test_data_image import check_image_prepared, check_image_reference_prepared, write_cifar
from test_data_listops import check_listops_eos_prepared, check_listops_prepared, write_listops
from test_data_pathfinder import check_pathfinder_prepared, check_pathfinder_reference_prepared, write_pathfinder
from test_data_retrieval import check_retrieval_eos_prepared, check_retrieval_prepared, write_aan
from test_data_text import check_text_eos_prepared, check_text_prepared, write_imdb

from dssbt.data.cli import add_subcommands
from dssbt.data.prepared import SPLITS, load_meta, load_split

# Under pytest-xdist (.ci/run) this module's tests stay on one worker, so its module fixtures run once.
pytestmark = pytest.mark.xdist_group("test_data_cli")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dssbt")
    sub = p.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    return p


def run(*argv) -> argparse.Namespace:
    args = parser().parse_args([str(a) for a in argv])
    assert isinstance(args.threads, int)  # the main CLI reads it for every subcommand
    args.func(args)
    return args


def load_all(folder):
    """The prepared splits as a reader produced them (decoded from their compact storage), and meta."""
    return {s: load_split(folder, s).decoded() for s in SPLITS}, load_meta(folder)


def check_contract(folder: Path, task: str, source: str):
    """The prepared form of dssbt.data.prepared, whatever the task."""
    splits, meta = load_all(folder)
    for name in SPLITS:  # stored compactly: ids in uint8 (every vocabulary here is < 256), 8-bit pixels as codes
        stored = load_split(folder, name)
        assert stored.inputs.dtype == np.uint8, (name, stored.inputs.dtype)
        assert (stored.table is None) == (meta["encoder"] == "embedding")
    for key in (
        "task",
        "source",
        "encoder",
        "d_input",
        "d_output",
        "l_max",
        "dual",
        "vocab",
        "sizes",
        "majority_baseline",
        "preprocessing",
    ):
        assert key in meta, key
    assert meta["task"] == task and meta["source"] == source
    for name, s in splits.items():
        assert meta["sizes"][name] == len(s) > 0
        assert s.labels.dtype == np.int64 and s.lengths.dtype == np.int64
        assert s.labels.min() >= 0 and s.labels.max() < meta["d_output"]
        if meta["dual"]:
            assert s.inputs.shape[1:] == (2, meta["l_max"]) and s.lengths.shape == (len(s), 2)
        else:
            assert s.inputs.shape[1:] == (meta["l_max"],) and s.lengths.shape == (len(s),)
        x = s.inputs
        if meta["encoder"] == "embedding":
            assert x.dtype == np.int64 and x.max() < meta["d_input"] == len(meta["vocab"])
            assert meta["vocab"][:2] == ["<pad>", "<unk>"]
            pos = np.arange(meta["l_max"])
            assert ((x == 0) == (pos >= s.lengths[..., None])).all()  # 0 exactly on the padding
        else:
            assert x.dtype == np.float32 and meta["d_input"] == 1 and meta["vocab"] is None
            assert (s.lengths == meta["l_max"]).all() and np.isfinite(x).all()
    return splits, meta


# -------------------------------------------------------------------------------------------- embedded, offline


@pytest.mark.slow
def test_embedded_tasks_generate_and_prepare_offline(tmp_path):
    run(
        "generate",
        "listops",
        "--out",
        tmp_path / "g/listops",
        "--n-train",
        60,
        "--n-val",
        10,
        "--n-test",
        20,
        "--max-length",
        120,
    )
    run("generate", "pathfinder", "--out", tmp_path / "g/pathfinder", "--n-samples", 40, "--distractors", 2)
    run("generate", "image", "--out", tmp_path / "g/image", "--n-train", 80, "--n-val", 20, "--n-test", 20)
    expected = {
        "listops": {"train": 60, "val": 10, "test": 20},
        "pathfinder": {"train": 32, "val": 4, "test": 4},
        "image": {"train": 80, "val": 20, "test": 20},
    }
    for task, sizes in expected.items():
        run("prepare", task, "--source", "embedded", "--input", tmp_path / "g" / task, "--out", tmp_path / "p" / task)
        splits, meta = check_contract(tmp_path / "p" / task, task, "embedded")
        assert meta["sizes"] == sizes
        for name, s in splits.items():  # balanced
            counts = np.bincount(s.labels, minlength=meta["d_output"])
            assert counts.max() - counts.min() <= 1, (task, name, counts)
        assert meta["generator"]["task"] == task
    assert load_meta(tmp_path / "p/listops")["l_max"] <= 120
    assert load_meta(tmp_path / "p/pathfinder")["generator"]["params"]["n_distractors"] == 2


@pytest.mark.slow
def test_embedded_defaults_have_their_sizes(tmp_path):
    """The default sizes: ListOps 2000/200/200 (<= 500 tokens), Pathfinder 2500 images -> 2000/250/250,
    MNIST 4000/500/500."""
    expected = {"listops": [2000, 200, 200], "pathfinder": [2000, 250, 250], "image": [4000, 500, 500]}
    for task, sizes in expected.items():
        run("generate", task, "--out", tmp_path / "g" / task)
        run("prepare", task, "--source", "embedded", "--input", tmp_path / "g" / task, "--out", tmp_path / "p" / task)
        meta = load_meta(tmp_path / "p" / task)
        assert [meta["sizes"][s] for s in SPLITS] == sizes
        assert meta["majority_baseline"] == pytest.approx(1 / meta["d_output"])  # balanced test set
    assert load_meta(tmp_path / "p/listops")["l_max"] <= 500


# ------------------------------------------------------------------------------ source lra: fixture archives


def tar_folder(src: Path, archive: Path, mode: str) -> Path:
    with tarfile.open(archive, mode) as tar:
        for p in sorted(src.iterdir()):
            tar.add(p, arcname=p.name)
    return archive


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """The three official archives, built from the per-task fixtures (the LRA release: a plain tar named .gz)."""
    base = tmp_path_factory.mktemp("archives")
    release = base / "release"
    write_listops(release)
    write_aan(release)
    write_pathfinder(release)
    write_pathfinder(release, resolution=128)
    imdb, cifar = write_imdb(base / "imdb"), write_cifar(base / "cifar")
    return {
        "lra": tar_folder(release, base / "lra_release.gz", "w"),
        "imdb": tar_folder(imdb, base / "aclImdb_v1.tar.gz", "w:gz"),
        "cifar10": tar_folder(cifar, base / "cifar-10-python.tar.gz", "w:gz"),
        "folders": {"lra": release, "imdb": imdb, "cifar10": cifar},
    }


CASES = [  # task, archive, extra options, hand-made check
    ("listops", "lra", [], lambda s, m: check_listops_prepared(s, m)),
    ("retrieval", "lra", [], lambda s, m: check_retrieval_prepared(s, m)),
    ("pathfinder", "lra", [], lambda s, m: check_pathfinder_prepared(s, m)),
    ("pathx", "lra", [], lambda s, m: check_pathfinder_prepared(s, m, resolution=128)),
    ("text", "imdb", ["--min-count", 2], lambda s, m: check_text_prepared(s, m)),
    ("image", "cifar10", ["--val-size", 10], lambda s, m: check_image_prepared(s, m)),
]
# the S4 reference's reading: the options the LRA preset sets (as Snakemake writes YAML's true: "True")
REFERENCE = ["--split", "reference", "--seed", 42]
CASES += [
    ("listops", "lra", ["--eos", "True"], lambda s, m: check_listops_eos_prepared(s, m)),
    ("retrieval", "lra", ["--eos", "true"], lambda s, m: check_retrieval_eos_prepared(s, m)),
    ("pathfinder", "lra", REFERENCE + ["--pixels", "unit"], lambda s, m: check_pathfinder_reference_prepared(s, m)),
    (
        "pathx",
        "lra",
        REFERENCE + ["--pixels", "unit"],
        lambda s, m: check_pathfinder_reference_prepared(s, m, resolution=128),
    ),
    ("text", "imdb", ["--min-count", 2, "--eos", "True"], lambda s, m: check_text_eos_prepared(s, m)),
    ("image", "cifar10", ["--val-size", 10, "--normalise", "reference"] + REFERENCE, "image-reference"),
]
IDS = [c[0] + ("-reference" if i >= 6 else "") for i, c in enumerate(CASES)]


@pytest.mark.parametrize("task, archive, options, check", CASES, ids=IDS)
def test_prepare_from_official_archives(tmp_path, archives, task, archive, options, check):
    out = tmp_path / "prepared" / task
    run(
        "prepare",
        task,
        "--source",
        "lra",
        "--input",
        archives[archive],
        "--out",
        out,
        "--extract-dir",
        tmp_path / "extracted" / task,
        *options,
    )
    splits, meta = check_contract(out, task, "lra")
    if check == "image-reference":
        check_image_reference_prepared(splits, meta, archives["folders"]["cifar10"])
    else:
        check(splits, meta)
    assert (tmp_path / "extracted" / task / ".complete").exists()
    # the same command on the already extracted folder gives the same arrays
    run(
        "prepare",
        task,
        "--source",
        "lra",
        "--input",
        archives["folders"][archive],
        "--out",
        tmp_path / "again",
        *options,
    )
    again, meta2 = load_all(tmp_path / "again")
    for s in SPLITS:
        for f in ("inputs", "lengths", "labels"):
            np.testing.assert_array_equal(getattr(splits[s], f), getattr(again[s], f))
    assert meta2["vocab"] == meta["vocab"]


def test_extract_command_then_prepare_from_its_folders(tmp_path, archives):
    """`dssbt extract` (the workflow's extract_lra job): one pass, one folder per task, which prepare reads."""
    run(
        "extract",
        "--input",
        archives["lra"],
        "--tasks",
        "listops",
        "retrieval",
        "pathfinder",
        "pathx",
        "--out",
        tmp_path / "x",
    )
    for task in ("listops", "retrieval", "pathfinder", "pathx"):
        assert (tmp_path / "x" / task / ".complete").exists()
    run(
        "prepare",
        "listops",
        "--source",
        "lra",
        "--input",
        tmp_path / "x" / "listops",
        "--out",
        tmp_path / "p",
        "--eos",
        "true",
    )
    check_listops_eos_prepared(*load_all(tmp_path / "p"))
    with pytest.raises(SystemExit):
        parser().parse_args(["prepare", "listops", "--source", "lra", "--input", "x", "--out", "y", "--eos", "maybe"])


def test_default_extract_dir_is_beside_the_archive(tmp_path, archives):
    archive = tmp_path / "lra_release.gz"
    archive.write_bytes(archives["lra"].read_bytes())
    run("prepare", "listops", "--source", "lra", "--input", archive, "--out", tmp_path / "p")
    assert (tmp_path / "lra_release.gz.extracted" / "listops" / ".complete").exists()
    check_listops_prepared(*load_all(tmp_path / "p"))


def test_read_only_archive_folder_extracts_beside_the_output(tmp_path, archives, monkeypatch):
    read_only = archives["lra"].parent
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == read_only else access(p, mode))
    run("prepare", "listops", "--source", "lra", "--input", archives["lra"], "--out", tmp_path / "prepared" / "lo")
    assert (tmp_path / "prepared" / "lra_release.gz.extracted" / "listops" / ".complete").exists()
    assert not (read_only / "lra_release.gz.extracted").exists()
    check_listops_prepared(*load_all(tmp_path / "prepared" / "lo"))


# ---------------------------------------------------------------------------------------------------- errors


def test_bad_input_is_a_value_error_with_a_clear_message(tmp_path, archives):
    with pytest.raises(ValueError, match="generate the embedded data first"):
        run("prepare", "listops", "--source", "embedded", "--input", tmp_path / "nothing", "--out", tmp_path / "p")
    with pytest.raises(ValueError, match="input not found"):
        run("prepare", "listops", "--source", "lra", "--input", tmp_path / "missing.gz", "--out", tmp_path / "p")
    with pytest.raises(ValueError, match="holds nothing the listops task needs"):
        run(
            "prepare",
            "listops",
            "--source",
            "lra",
            "--input",
            archives["imdb"],
            "--out",
            tmp_path / "p",
            "--extract-dir",
            tmp_path / "x",
        )
    with pytest.raises(ValueError, match="no generator.json"):
        run(
            "prepare", "listops", "--source", "embedded", "--input", archives["folders"]["lra"], "--out", tmp_path / "p"
        )
    with pytest.raises(ValueError, match="multiples of 10"):
        run("generate", "image", "--out", tmp_path / "g", "--n-test", 15)
    assert not (tmp_path / "p").exists() and not (tmp_path / "g").exists()


def test_a_failed_prepare_keeps_the_previous_complete_output(tmp_path):
    root = write_listops(tmp_path / "in")
    run("prepare", "listops", "--source", "lra", "--input", root, "--out", tmp_path / "p")
    before = {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()}
    (root / "lra_release/listops-1000/basic_val.tsv").write_text("Source\tTarget\nbroken\n")
    with pytest.raises(ValueError, match="basic_val.tsv:2"):
        run("prepare", "listops", "--source", "lra", "--input", root, "--out", tmp_path / "p")
    assert {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()} == before  # untouched, no temporaries


@pytest.mark.parametrize(
    "argv",
    [
        ["prepare", "text", "--source", "embedded", "--input", "x", "--out", "y"],  # no embedded Text
        ["prepare", "listops", "--input", "x", "--out", "y"],  # --source is required
        ["generate", "retrieval", "--out", "y"],
        ["generate", "listops", "--out", "y", "--n-train", "0"],
        ["download", "mnist"],
    ],
)
def test_argument_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2


def test_download_command_with_a_mirror(tmp_path):
    src = tmp_path / "mirror" / "cifar.tar.gz"
    src.parent.mkdir()
    src.write_bytes(b"not the real archive")
    with pytest.raises(ValueError, match=r"size 20 bytes, expected 170,498,071"):
        run(
            "download",
            "cifar10",
            "--out",
            tmp_path / "raw" / "cifar-10-python.tar.gz",
            "--url",
            src.as_uri(),
            "--quiet",
        )
    assert not (tmp_path / "raw" / "cifar-10-python.tar.gz").exists()
    run("download", "lra", "--out", tmp_path / "raw" / "lra_release.gz", "--url", src.as_uri(), "--quiet")
    assert (tmp_path / "raw" / "lra_release.gz").read_bytes() == b"not the real archive"
    assert (tmp_path / "raw" / "lra_release.gz.sha256").exists()


def test_download_with_an_expected_sha256_checks_that_instead_of_the_official_size_and_md5(tmp_path):
    """A mirror's own copy (a site's, a test fixture) named by its SHA-256: the official size and MD5 of the
    archive are not checked, the given hash is."""
    import hashlib

    src = tmp_path / "mirror" / "cifar.tar.gz"
    src.parent.mkdir()
    src.write_bytes(b"a site's own copy")
    out = tmp_path / "raw" / "cifar-10-python.tar.gz"
    wrong = hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(ValueError, match=rf"SHA-256 [0-9a-f]{{64}}, expected {wrong}"):
        run("download", "cifar10", "--out", out, "--url", src.as_uri(), "--sha256", wrong, "--quiet")
    assert not out.exists()
    run(
        "download",
        "cifar10",
        "--out",
        out,
        "--url",
        src.as_uri(),
        "--sha256",
        hashlib.sha256(src.read_bytes()).hexdigest(),
        "--quiet",
    )
    assert out.read_bytes() == src.read_bytes()
