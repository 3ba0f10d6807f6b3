"""The data subcommands of ``dssbt``: ``download``, ``generate``, ``prepare``.

    dssbt download {lra,imdb,cifar10} [--out FILE] [--url MIRROR] [--sha256 HEX]
    dssbt generate {listops,pathfinder,image} --out DIR [--seed S] [sizes and difficulty]
    dssbt prepare {listops,text,retrieval,image,pathfinder,pathx} --source {lra,embedded} --input PATH --out DIR
        [--eos true] [--normalise reference] [--split reference --seed 42] [--pixels unit]  (the S4 reference)
    dssbt extract --input lra_release.gz --tasks listops retrieval pathfinder pathx --out DIR

The tasks, their flags and their generators come from the task registry (:mod:`dssbt.data.tasks`). Registered on
the main parser by :func:`add_subcommands`. Every command function raises ValueError with a clear
message for bad input (the main CLI prints it and exits with status 2).
"""

from __future__ import annotations

import argparse
import time

from . import tasks
from .download import ARCHIVES
from .tasks import _positive, default


def _threads(p: argparse.ArgumentParser) -> None:
    # The main CLI limits torch's and numpy's BLAS threads to --threads for every subcommand.
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="most threads torch and numpy's BLAS may use (default 1); the data commands' work is mostly "
        "single-threaded Python and numpy work that more threads hardly speed up",
    )


# -------------------------------------------------------------------------------------------------------- commands


def cmd_download(args: argparse.Namespace) -> None:
    from .download import download_archive

    download_archive(
        args.archive,
        args.out,
        url=args.url,
        sha256=args.sha256,
        retries=args.retries,
        timeout=args.timeout,
        progress=not args.quiet,
    )


def cmd_generate(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    generator = tasks.get(args.task).generator
    if generator is None:  # argparse restricts the choices
        raise ValueError(f"no generator for task {args.task!r}")
    info = generator.from_args(args)
    print(
        f"generated {args.task} (seed {args.seed}) into {args.out}: sizes {info['sizes']}, "
        f"label counts {info['label_counts']} ({time.perf_counter() - t0:.1f} s)"
    )


def cmd_extract(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .download import extract_tasks

    t0 = time.perf_counter()
    extract_tasks(args.input, {task: Path(args.out) / task for task in args.tasks})
    print(f"extracted {', '.join(args.tasks)} from {args.input} in one pass ({time.perf_counter() - t0:.1f} s)")


# what every `dssbt prepare <task>` parser sets besides the task's own options (those go to the reader)
_PREPARE_COMMON = ("command", "task", "source", "input", "out", "extract_dir", "threads", "func")


def cmd_prepare(args: argparse.Namespace) -> None:
    from .prepare import prepare_task

    opts = {k: v for k, v in vars(args).items() if k not in _PREPARE_COMMON}
    prepare_task(args.task, args.source, args.input, args.out, extract_dir=args.extract_dir, **opts)


# --------------------------------------------------------------------------------------------------------- parsers


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``download``, ``generate`` and ``prepare`` on the ``dssbt`` subparsers."""
    # download
    p = sub.add_parser(
        "download",
        help="download one LRA source archive (resumable, verified, atomic)",
        description="Download an archive to data/raw (or --out). Sources: lra = lra_release.gz "
        "(ListOps, Retrieval, Pathfinder, Path-X), imdb = aclImdb_v1.tar.gz (Text), "
        "cifar10 = cifar-10-python.tar.gz (Image). A present, valid file is kept.",
    )
    p.add_argument("archive", choices=sorted(ARCHIVES), help="which archive")
    p.add_argument("--out", default=None, help="file to write (default: data/raw/<official file name>)")
    p.add_argument("--url", default=None, help="mirror URL (http(s):// or file://) instead of the official one")
    p.add_argument(
        "--sha256",
        default=None,
        help="expected SHA-256 (else the official checks and any hash recorded in <out>.sha256 by an earlier download)",
    )
    p.add_argument("--retries", type=int, default=5, help="resumes after a broken connection (default 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default 60)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _threads(p)
    p.set_defaults(func=cmd_download)

    # extract
    p = sub.add_parser(
        "extract",
        help="extract the members of several tasks from one archive in a single pass",
        description="Read the archive once and write each task's members to OUT/<task> (a folder "
        "`dssbt prepare --input` takes). A complete OUT/<task> (with .complete) is kept.",
    )
    p.add_argument("--input", required=True, help="the archive, e.g. lra_release.gz")
    p.add_argument("--tasks", nargs="+", required=True, choices=sorted(tasks.names()), help="tasks to extract")
    p.add_argument("--out", required=True, help="folder; task t goes to OUT/t")
    _threads(p)
    p.set_defaults(func=cmd_extract)

    # generate
    p = sub.add_parser("generate", help="generate an embedded offline task in the official file format")
    gsub = p.add_subparsers(dest="task", required=True)

    def generator(name: str, help: str, sizes: dict[str, int]) -> argparse.ArgumentParser:
        """A generator's parser with the flags every generator has: --out, --seed, sizes, --threads."""
        q = gsub.add_parser(name, help=help)
        q.add_argument("--out", required=True, help="folder to write")
        q.add_argument("--seed", type=int, default=0, help="same seed and settings -> byte-identical files")
        for flag, value in sizes.items():
            what = flag.removeprefix("--n-")
            q.add_argument(
                flag,
                type=_positive,
                default=value,
                help=f"examples to generate{'' if what == 'samples' else ' for ' + what} ({value})",
            )
        _threads(q)
        q.set_defaults(func=cmd_generate)
        return q

    # defaults are read from the generators themselves (generate.py), so they are defined once
    for name, task in tasks.TASKS.items():
        g = task.generator
        if g is not None:
            q = generator(name, g.help, {f"--{size.replace('_', '-')}": default(g.run, size) for size in g.sizes})
            if g.flags is not None:
                g.flags(q)

    # prepare
    p = sub.add_parser("prepare", help="read a task (real LRA or embedded) into the prepared form")
    psub = p.add_subparsers(dest="task", required=True)
    for name, task in tasks.TASKS.items():
        q = psub.add_parser(name, help=task.help)
        q.add_argument(
            "--source",
            required=True,
            choices=["lra", "embedded"] if task.generator else ["lra"],
            help="lra: the real data; embedded: a folder written by `dssbt generate`",
        )
        q.add_argument("--input", required=True, help=f"folder, or (lra) the archive {task.archive.filename}")
        q.add_argument("--out", required=True, help="prepared folder to write (train/val/test.npz, meta.json)")
        q.add_argument(
            "--extract-dir",
            default=None,
            help="where to extract an archive (default: <archive>.extracted/<task> beside it, or "
            "beside --out if the archive's folder is read-only)",
        )
        _threads(q)
        q.set_defaults(func=cmd_prepare)
        task.flags(q)  # the reader's options
