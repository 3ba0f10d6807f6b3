"""The task registry (dssbt.data.tasks): every place that lists tasks reads it, and a task registered at run time
(a toy task, declared here only) is accepted by the CLI, prepare, the archive extraction and the config schema."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from jsonschema import Draft202012Validator, ValidationError

from dssbt.data import tasks
from dssbt.data.cli import add_subcommands
from dssbt.data.download import ARCHIVES, Archive, member_selector
from dssbt.data.prepare import prepare_task
from dssbt.data.prepared import SPLITS, Split, load_meta, load_split
from dssbt.io import write_json
from dssbt.schema import config_schema

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dssbt")
    add_subcommands(p.add_subparsers(dest="command", required=True))
    return p


def config_with(**edits) -> dict:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg.update(edits)
    return cfg


def test_the_six_lra_tasks_are_registered_and_every_list_reads_the_registry():
    import dssbt.data as data
    import dssbt.data.download as download

    assert tasks.names() == ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
    assert data.LRA_TASKS == tasks.names()
    assert set(data.EMBEDDED_TASKS) == {"listops", "pathfinder", "image"}
    assert download.TASK_ARCHIVE == {
        "listops": "lra",
        "text": "imdb",
        "retrieval": "lra",
        "image": "cifar10",
        "pathfinder": "lra",
        "pathx": "lra",
    }
    assert [n for n, t in tasks.TASKS.items() if t.dual] == ["retrieval"]
    choices = parser()._subparsers._group_actions[0].choices  # download, extract, generate, prepare
    assert tuple(choices["prepare"]._subparsers._group_actions[0].choices) == tasks.names()
    assert set(choices["generate"]._subparsers._group_actions[0].choices) == set(data.EMBEDDED_TASKS)
    with pytest.raises(ValueError, match="unknown task 'nosuch'"):
        tasks.get("nosuch")


def test_the_schema_names_no_task_itself_and_gets_its_enums_from_the_registry():
    raw = yaml.safe_load(SCHEMA.read_text())
    assert "enum" not in raw["definitions"]["task"] and "enum" not in raw["definitions"]["archive"]
    for name in tasks.names():  # no list of tasks left in the YAML (descriptions may name them in prose)
        assert f"enum: [{name}" not in SCHEMA.read_text()
    schema = config_schema(SCHEMA)
    assert schema["definitions"]["task"]["enum"] == list(tasks.names())
    assert schema["definitions"]["archive"]["enum"] == list(ARCHIVES)
    Draft202012Validator(schema).validate(config_with())  # the default config
    for bad in ({"tasks": ["nosuch"]}, {"task_settings": {"nosuch": {}}}, {"downloads": {"nosuch": {"url": "x"}}}):
        with pytest.raises(ValidationError, match="nosuch"):
            Draft202012Validator(schema).validate(config_with(**bad))


# ----------------------------------------------------------------------------------------------- a toy task


def generate_toy(out, *, n_train: int = 20, n_val: int = 5, n_test: int = 5, seed: int = 0, width: int = 8) -> dict:
    """Rows of ``width`` random digits; label: the first digit is odd. Files toy_{split}.txt + generator.json."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        rows = rng.integers(0, 10, size=(n, width))
        (out / f"toy_{split}.txt").write_text("".join("".join(map(str, r)) + "\n" for r in rows))
    info = {"task": "toy", "seed": seed, "sizes": {"train": n_train, "val": n_val, "test": n_test}, "label_counts": {}}
    write_json(out / "generator.json", info)
    return info


def read_toy(folder, *, offset: int = 0):
    """Digits -> ids 2..11 (+ offset), lengths all L, labels (first digit odd)."""
    splits = {}
    for split in SPLITS:
        rows = (Path(folder) / f"toy_{split}.txt").read_text().split()
        x = np.array([[int(c) for c in r] for r in rows], dtype=np.int64)
        splits[split] = Split(inputs=x + 2 + offset, lengths=np.full(len(x), x.shape[1]), labels=x[:, 0] % 2)
    meta = {
        "task": "toy",
        "encoder": "embedding",
        "d_input": 12 + offset,
        "d_output": 2,
        "l_max": x.shape[1],
        "dual": False,
        "vocab": None,
    }
    return splits, meta


@pytest.fixture
def toy():
    """A task declared in this test only: registered, then removed."""
    task = tasks.register(
        tasks.Task(
            name="toy",
            help="Toy: toy_{train,val,test}.txt",
            reader=read_toy,
            archive=Archive("toyarch", "toy.tar", "file:///nowhere/toy.tar"),
            members=lambda name: Path(name).name.startswith("toy_"),
            flags=lambda q: q.add_argument("--offset", type=int, default=None),
            generator=tasks.Generator(
                run=generate_toy,
                help="random digits",
                sizes=("n_train", "n_val", "n_test"),
                flags=lambda q: q.add_argument("--width", type=int, default=8),
                config=lambda a: {"width": a.width},
            ),
        )
    )
    yield task
    tasks.unregister("toy")
    assert "toy" not in tasks.TASKS and "toyarch" not in ARCHIVES


def test_a_registered_toy_task_is_accepted_everywhere(toy, tmp_path):
    import dssbt.data as data
    import dssbt.data.download as download

    assert "toy" in data.LRA_TASKS and "toy" in data.EMBEDDED_TASKS and download.TASK_ARCHIVE["toy"] == "toyarch"
    assert ARCHIVES["toyarch"] is toy.archive and member_selector("toy")("a/b/toy_train.txt")

    # the CLI: generate and prepare with the task's own flags
    for argv in (
        ["generate", "toy", "--out", tmp_path / "raw", "--n-train", 30, "--width", 6, "--seed", 1],
        ["prepare", "toy", "--source", "embedded", "--input", tmp_path / "raw", "--out", tmp_path / "p", "--offset", 3],
    ):
        args = parser().parse_args([str(a) for a in argv])
        args.func(args)
    meta = load_meta(tmp_path / "p")
    assert meta["task"] == "toy" and meta["options"] == {"offset": 3} and meta["generator"]["seed"] == 1
    train = load_split(tmp_path / "p", "train")
    assert train.inputs.shape == (30, 6) and train.inputs.min() >= 5 and meta["l_max"] == 6

    # prepare_task directly, and the embedded check: a task without a generator is refused as embedded
    meta = prepare_task("toy", "embedded", tmp_path / "raw", tmp_path / "q", log=None)
    assert meta["options"] == {} and (tmp_path / "q" / "meta.json").is_file()
    with pytest.raises(ValueError, match="no embedded source"):
        prepare_task("pathx", "embedded", tmp_path / "raw", tmp_path / "r", log=None)

    # the config schema, as the Snakefile builds it
    schema = config_schema(SCHEMA)
    assert "toy" in schema["definitions"]["task"]["enum"] and "toyarch" in schema["definitions"]["archive"]["enum"]
    cfg = config_with(
        tasks=["toy"],
        data={"toy": {"source": "embedded", "generate": {"width": 6}}},
        downloads={"toyarch": {"url": "file:///elsewhere/toy.tar"}},
        task_settings={"toy": {"model": {"d_model": 8}}},
    )
    Draft202012Validator(schema).validate(cfg)


def test_registering_a_name_twice_or_a_clashing_archive_is_refused(toy):
    with pytest.raises(ValueError, match="registered already"):
        tasks.register(toy)
    clash = tasks.Task(
        name="toy2", help="", reader=read_toy, archive=Archive("lra", "other.tar", "file:///x"), members=lambda n: False
    )
    with pytest.raises(ValueError, match="archive 'lra' differs"):
        tasks.register(clash)
    assert "toy2" not in tasks.TASKS


def test_the_workflow_validates_against_the_derived_schema():
    """The Snakefile validates through dssbt.schema.derived_schema_file (a dry run of it is in test_workflow)."""
    text = (ROOT / "Snakefile").read_text()
    assert "derived_schema_file(" in text and 'validate(config, "workflow' not in text
    from dssbt.schema import derived_schema_file

    with derived_schema_file(SCHEMA) as path:
        assert json.loads(Path(path).read_text()) == config_schema(SCHEMA)
    assert not Path(path).exists()
