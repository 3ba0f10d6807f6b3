"""Atomic writes: a finished file has the mode of any new file (umask), a failed write leaves nothing."""

import os
import stat

import pytest

from dssbt.io import atomic_path, write_json


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomically_written_file_has_the_mode_a_plain_new_file_gets(tmp_path, umask):
    old = os.umask(umask)
    try:
        (tmp_path / "plain.txt").write_text("x")  # the reference: what open() creates under this umask
        write_json(tmp_path / "atomic.json", {"a": 1})
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "atomic.json") == mode(tmp_path / "plain.txt")


def test_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-way")
    assert list(tmp_path.iterdir()) == []
