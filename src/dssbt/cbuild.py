"""Build a small C source into a shared library once, and load it with ctypes.

The library is compiled with ``$CC`` (default ``cc``) into ``$DSSBT_CACHE`` (default ``~/.cache/dssbt``) under a
name keyed by the source, the flags, the compiler and the CPU (``-march=native`` makes a library valid on one CPU
kind only). It is written under a temporary name and renamed into place, so concurrent jobs building the same
library never load a half-written one. Without a working compiler ``build`` returns the reason instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path


def _cpu() -> str:
    try:
        return "".join(
            ln for ln in Path("/proc/cpuinfo").read_text().splitlines()[:30] if ln.startswith(("model name", "flags"))
        )
    except OSError:
        return platform.processor()


def build(name: str, source: str, flags: list[str]) -> tuple[ctypes.CDLL | None, str | None]:
    """(library, None), or (None, why not) when no compiler works. ``name``: the library file's stem."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return None, f"no C compiler ({cc!r} not found; set $CC)"
    key = hashlib.sha256((source + " ".join(flags) + cc + platform.machine() + _cpu()).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("DSSBT_CACHE", Path.home() / ".cache" / "dssbt"))
    lib_path = cache / f"{name}_{key}.so"
    if not lib_path.exists():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                src = Path(tmp) / f"{name}.c"
                src.write_text(source)
                out = Path(tmp) / "lib.so"
                p = subprocess.run([cc, *flags, "-o", str(out), str(src), "-lm"], capture_output=True, text=True)
                if p.returncode != 0:
                    return None, f"{cc} failed: {p.stderr.strip()[:500]}"
                os.replace(out, lib_path)  # atomic: a half-written library is never loaded
        except OSError as e:
            return None, f"cannot build {name} in {cache}: {e}"
    return ctypes.CDLL(str(lib_path)), None


class Library:
    """A C library built (``build``) and loaded on first use. ``signatures``: function name -> (argtypes,
    restype) as ctypes wants them."""

    def __init__(self, name: str, source: str, flags: list[str], signatures: dict[str, tuple[list, type | None]]):
        self.name, self.source, self.flags, self.signatures = name, source, flags, signatures
        self._lib: ctypes.CDLL | None = None
        self._error: str | None = None

    def load(self) -> ctypes.CDLL | None:
        """The library, or None when it cannot be built (``error()`` says why); built at most once a process."""
        if self._lib is None and self._error is None:
            lib, self._error = build(self.name, self.source, self.flags)
            if lib is not None:
                for fn, (argtypes, restype) in self.signatures.items():
                    getattr(lib, fn).argtypes = argtypes
                    getattr(lib, fn).restype = restype
                self._lib = lib
        return self._lib

    def error(self) -> str | None:
        self.load()
        return self._error
