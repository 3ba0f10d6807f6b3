"""Downloads that resume, verify and land atomically; selective extraction of the archives.

A download goes to ``<file>.part`` (resumed with an HTTP ``Range`` request after a cut connection), is checked
against the known size / MD5 / SHA-256, and only then renamed onto ``<file>``. A file already in place and valid is
never fetched again. The SHA-256 of every verified archive is recorded beside it in ``<file>.sha256``
(``sha256sum`` format) on first success, and checked from then on: where no official hash exists (the LRA
release) the first good download fixes it.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from ..io import atomic_path


@dataclass(frozen=True)
class Archive:
    """One downloadable source: official file name, URL and what is known to check it against."""

    name: str
    filename: str
    url: str
    size: int | None = None  # bytes
    md5: str | None = None
    sha256: str | None = None


# The archives of the registered tasks (a task registered with an archive not listed here adds it: dssbt.data.tasks).
ARCHIVES: dict[str, Archive] = {
    # The LRA release: a tar despite the .gz name (tarfile detects the compression); ~7.7 GB; no official hash.
    "lra": Archive("lra", "lra_release.gz", "https://storage.googleapis.com/long-range-arena/lra_release.gz"),
    "imdb": Archive(
        "imdb",
        "aclImdb_v1.tar.gz",
        "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
        size=84_125_825,
        md5="7c2ac02c03563afcf9b574c7e56c153a",
    ),
    "cifar10": Archive(
        "cifar10",
        "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        size=170_498_071,
        md5="c58f30108f718f92721af3b95e74349a",
    ),
}

CHUNK = 1 << 20
RETRYABLE = (urllib.error.URLError, HTTPException, ConnectionError, socket.timeout, TimeoutError)


def __getattr__(name: str):
    """``TASK_ARCHIVE`` (task -> key in ARCHIVES), read from the task registry (:mod:`dssbt.data.tasks`)."""
    if name == "TASK_ARCHIVE":
        from .tasks import task_archive

        return task_archive()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class DownloadError(ValueError):
    """A download that failed for good (after the retries) or a file that failed verification."""


# ----------------------------------------------------------------------------------------------------------- hashes


def file_hashes(path: str | os.PathLike) -> tuple[int, str, str]:
    """(size in bytes, MD5 hex, SHA-256 hex) of a file, read once."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return size, md5.hexdigest(), sha.hexdigest()


def sidecar(path: str | os.PathLike) -> Path:
    """Where the recorded SHA-256 of ``path`` lives."""
    return Path(f"{path}.sha256")


def recorded_sha256(path: str | os.PathLike) -> str | None:
    """The SHA-256 recorded beside ``path`` (None if none is)."""
    side = sidecar(path)
    if not side.exists():
        return None
    text = side.read_text().split()
    if not text or not re.fullmatch(r"[0-9a-f]{64}", text[0]):
        raise DownloadError(f"{side}: not a SHA-256 record (expected '<64 hex digits>  <name>')")
    return text[0]


def verify(
    path: str | os.PathLike,
    *,
    size: int | None = None,
    md5: str | None = None,
    sha256: str | None = None,
    recorded: str | None = None,
    what: str | None = None,
) -> str:
    """Check size, MD5 and SHA-256 of ``path`` (each where given; ``recorded``, or else the SHA-256 recorded
    beside ``path``, is checked too).

    Returns the SHA-256. Raises DownloadError naming the file, the expected and the found value.
    """
    path = Path(path)
    what = what or str(path)
    if size is not None:
        actual = path.stat().st_size
        if actual != size:
            raise DownloadError(f"{what}: size {actual:,} bytes, expected {size:,} (truncated or wrong file)")
    _, got_md5, got_sha = file_hashes(path)
    if md5 is not None and got_md5 != md5.lower():
        raise DownloadError(f"{what}: MD5 {got_md5}, expected {md5} (corrupt or wrong file)")
    if recorded is None:
        recorded = recorded_sha256(path)
    for expected, origin in ((sha256, "expected"), (recorded, "recorded by an earlier download:")):
        if expected is not None and got_sha != expected.lower():
            raise DownloadError(f"{what}: SHA-256 {got_sha}, {origin} {expected} (corrupt or wrong file)")
    return got_sha


def record_sha256(path: str | os.PathLike, digest: str) -> None:
    """Write ``<digest>  <name>`` beside ``path`` (atomically)."""
    with atomic_path(sidecar(path)) as tmp:
        tmp.write_text(f"{digest}  {Path(path).name}\n")


# --------------------------------------------------------------------------------------------------------- download


def _open(url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "dssbt", "Accept-Encoding": "identity"})
    if offset > 0:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=timeout)


def _fetch_once(url: str, part: Path, timeout: float, progress: bool, desc: str) -> None:
    """One attempt: continue ``part`` from its current size; returns when the body is complete.

    Raises a RETRYABLE error when the connection breaks, DownloadError on a hard failure.
    """
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset > 0:  # the range starts at/after the end: our part may be complete or wrong
            e.close()
            raise _RangeNotSatisfiable() from None
        if 500 <= e.code < 600 or e.code == 429:
            raise
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    with resp:
        status = getattr(resp, "status", None) or 200
        if offset > 0 and status == 206:
            m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise DownloadError(
                    f"{url}: server answered range {resp.headers.get('Content-Range')!r} "
                    f"to a request from byte {offset}"
                )
            total = None if m.group(3) == "*" else int(m.group(3))
            mode = "ab"
        else:  # the server ignored the Range header (or none was sent): start over
            offset, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None else None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)
        try:
            with open(part, mode) as fh:
                while chunk := resp.read(CHUNK):
                    fh.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    got = part.stat().st_size
    if total is not None and got < total:
        raise ConnectionError(f"connection closed at byte {got:,} of {total:,}")
    if total is not None and got > total:
        raise DownloadError(f"{url}: received {got:,} bytes, more than the announced {total:,}")


class _RangeNotSatisfiable(Exception):
    pass


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    size: int | None = None,
    md5: str | None = None,
    sha256: str | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Download ``url`` to ``dest`` (resuming, verified, atomic); returns ``dest``.

    - ``dest`` present and valid: nothing is fetched. Present but invalid: DownloadError (remove it by hand;
      a file that made it into place once passed verification, so this is not ours to delete).
    - Bytes accumulate in ``dest.part``; a broken connection is resumed with ``Range: bytes=<n>-`` up to
      ``retries`` times (a server that ignores ranges makes it start over).
    - After the body: size, MD5, SHA-256 checks; on mismatch the part file is deleted and DownloadError raised,
      so no file is left in place. On success ``dest.part`` is renamed onto ``dest`` and its SHA-256 recorded.
    ``file://`` URLs work too (a verified local copy).
    """
    dest = Path(dest)
    say = log or (lambda s: None)
    if dest.exists():
        digest = verify(dest, size=size, md5=md5, sha256=sha256)
        if not sidecar(dest).exists():
            record_sha256(dest, digest)
        say(f"{dest}: present and verified (sha256 {digest}); not downloaded again")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    recorded = recorded_sha256(dest)  # a hash fixed by an earlier good download binds the next one
    part = Path(f"{dest}.part")
    if part.exists() and size is not None and part.stat().st_size > size:
        part.unlink()
    attempt = 0
    while True:
        try:
            _fetch_once(url, part, timeout, progress, dest.name)
            break
        except _RangeNotSatisfiable:
            if size is not None and part.stat().st_size == size:
                break  # already complete; verification decides
            part.unlink()  # inconsistent partial file: start over
        except RETRYABLE as e:
            attempt += 1
            if attempt > retries:
                raise DownloadError(
                    f"{url}: download failed after {retries} retries ({e}); "
                    f"{part.stat().st_size if part.exists() else 0:,} bytes kept in {part}, "
                    f"run again to resume"
                ) from None
            have = part.stat().st_size if part.exists() else 0
            say(f"{url}: {e}; resuming from byte {have:,} (retry {attempt}/{retries})")
            time.sleep(backoff * attempt)
    try:
        digest = verify(part, size=size, md5=md5, sha256=sha256, recorded=recorded, what=f"{url} -> {dest}")
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    record_sha256(dest, digest)
    say(f"{dest}: downloaded and verified (sha256 {digest})")
    return dest


def download_archive(
    name: str, dest: str | os.PathLike | None = None, *, url: str | None = None, sha256: str | None = None, **kw
) -> Path:
    """Download one of :data:`ARCHIVES` (``lra``, ``imdb``, ``cifar10``); ``url`` overrides with a mirror.

    The file is checked against the archive's official size, MD5 and SHA-256, unless ``sha256`` is given: an
    expected SHA-256 names the one file wanted and is then the only check (a site's own copy, a test fixture).
    """
    if name not in ARCHIVES:
        raise ValueError(f"unknown archive {name!r}; choose one of {sorted(ARCHIVES)}")
    a = ARCHIVES[name]
    dest = Path(dest) if dest is not None else Path("data/raw") / a.filename
    if sha256 is not None:
        return download(url or a.url, dest, sha256=sha256, **kw)
    return download(url or a.url, dest, size=a.size, md5=a.md5, sha256=a.sha256, **kw)


# ------------------------------------------------------------------------------------------------------- extraction


def _parts(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _has_run(parts: list[str], run: tuple[str, ...]) -> bool:
    k = len(run)
    return any(tuple(parts[i : i + k]) == run for i in range(len(parts) - k + 1))


def member_selector(task: str) -> Callable[[str], bool]:
    """Which archive members a task needs (by name; folders are found wherever they are nested): the task's
    ``members`` in the registry (:mod:`dssbt.data.tasks`)."""
    from .tasks import get

    return get(task).members


def extract_task(archive: str | os.PathLike, task: str, dest: str | os.PathLike, *, log=print) -> Path:
    """Extract only the members ``task`` needs from ``archive`` into the folder ``dest``; returns ``dest``.

    One task of :func:`extract_tasks` (see there).
    """
    return extract_tasks(archive, {task: dest}, log=log)[task]


def extract_tasks(archive: str | os.PathLike, dests: dict[str, str | os.PathLike], *, log=print) -> dict[str, Path]:
    """Extract the members each task needs from ``archive`` into its folder, all in ONE pass; returns the folders.

    ``dests``: task -> folder. The LRA release holds four tasks in ~7.7 GB; a pass per task reads (and, for a
    compressed archive, decompresses) all of it each time, one pass for every requested task reads it once.
    One sequential pass over the archive (any compression tarfile knows, or none). Each task's members go to a
    temporary folder beside its ``dest``, renamed into place when the pass is complete; a task whose ``dest`` is
    already complete (marked by ``.complete``) is reused and not extracted again (no pass at all if every one
    is). A truncated or corrupt archive raises ValueError naming it and leaves no folder behind; so does an
    archive that holds nothing for one of the tasks.
    """
    archive = Path(archive)
    dests = {task: Path(d) for task, d in dests.items()}
    todo = {task: d for task, d in dests.items() if not (d / ".complete").exists()}
    if not todo:
        return dests
    if not archive.is_file():
        raise ValueError(f"{archive}: archive not found")
    wanted = {task: member_selector(task) for task in todo}
    tmps = {task: d.parent / f".{d.name}.extracting-{os.getpid()}" for task, d in todo.items()}
    counts = {task: 0 for task in todo}
    filt = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        for task, tmp in tmps.items():
            todo[task].parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(archive, "r|*") as tar:
            for m in tar:
                if not (m.isfile() or m.isdir()):
                    continue
                takers = [task for task, sel in wanted.items() if sel(m.name)]
                if not takers:
                    continue
                if os.path.isabs(m.name) or ".." in Path(m.name).parts:
                    raise ValueError(f"{archive}: unsafe member path {m.name!r} (absolute or with '..')")
                # tarfile's "data" filter exists from Python 3.11.4/3.12 (3.10: the check above suffices,
                # only plain files and folders reach this point)
                tar.extract(m, tmps[takers[0]], **filt)
                for task in takers[1:]:  # a stream is read once: copy what another task needs too
                    target = tmps[task] / m.name
                    if m.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                    else:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(tmps[takers[0]] / m.name, target)
                for task in takers:
                    counts[task] += 1
        for task, n in counts.items():
            if n == 0:
                raise ValueError(f"{archive}: holds nothing the {task} task needs (is this the right archive?)")
        for task, tmp in tmps.items():
            (tmp / ".complete").write_text(f"{archive.name} {counts[task]}\n")
            if todo[task].exists():
                shutil.rmtree(todo[task])
            os.replace(tmp, todo[task])
    except BaseException as e:
        for tmp in tmps.values():
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)):
            raise ValueError(
                f"{archive}: truncated or corrupt archive, extraction failed ({type(e).__name__}: {e})"
            ) from None
        raise
    if log:
        for task, n in counts.items():
            log(f"{archive}: extracted {n} members for {task} into {todo[task]}")
    return dests
