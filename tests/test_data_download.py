"""Downloads against a local HTTP server (127.0.0.1, port 0, in a thread): resume after a cut connection with a
Range request, checksum mismatch, no re-download of a valid file; selective extraction of archives."""

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from dssbt.data import download as download_module
from dssbt.data.download import DownloadError, download, extract_task, extract_tasks

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """Serves ``files`` (path -> bytes). ``cut_after``: the first ``cuts`` responses stop after that many body
    bytes and drop the connection. ``ranges``: whether Range requests are honoured."""

    def __init__(self, files, cut_after=None, cuts=1, ranges=True):
        self.files, self.cut_after, self.cuts, self.ranges = files, cut_after, cuts, ranges
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and outer.ranges:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                chunk = body[start:]
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                if outer.cut_after is not None and outer.cuts > 0:
                    outer.cuts -= 1
                    self.wfile.write(chunk[: outer.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def fetch(url, dest, **kw):
    kw.setdefault("backoff", 0.0)
    kw.setdefault("timeout", 10.0)
    return download(url, dest, progress=False, log=None, **kw)


def test_resume_after_cut_connection_uses_range(tmp_path):
    dest = tmp_path / "raw" / "archive.tar.gz"
    with Server({"/a.tar.gz": PAYLOAD}, cut_after=100_000, cuts=2) as srv:
        fetch(srv.url + "/a.tar.gz", dest, size=len(PAYLOAD), md5=MD5)
    assert dest.read_bytes() == PAYLOAD
    assert srv.requests == [("/a.tar.gz", None), ("/a.tar.gz", "bytes=100000-"), ("/a.tar.gz", "bytes=200000-")]
    assert not Path(f"{dest}.part").exists()
    assert Path(f"{dest}.sha256").read_text() == f"{SHA}  archive.tar.gz\n"  # recorded on first success


def test_server_without_ranges_restarts_from_zero(tmp_path):
    dest = tmp_path / "a.bin"
    with Server({"/a": PAYLOAD}, cut_after=50_000, ranges=False) as srv:
        fetch(srv.url + "/a", dest, sha256=SHA)
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in srv.requests] == [None, "bytes=50000-"]  # asked to resume; got the whole file


def test_leftover_part_file_is_resumed(tmp_path):
    dest = tmp_path / "a.bin"
    Path(f"{dest}.part").write_bytes(PAYLOAD[:123_456])
    with Server({"/a": PAYLOAD}) as srv:
        fetch(srv.url + "/a", dest, size=len(PAYLOAD), sha256=SHA)
    assert dest.read_bytes() == PAYLOAD and srv.requests == [("/a", "bytes=123456-")]


def test_complete_part_file_is_verified_not_refetched(tmp_path):
    dest = tmp_path / "a.bin"
    Path(f"{dest}.part").write_bytes(PAYLOAD)
    with Server({"/a": PAYLOAD}) as srv:
        fetch(srv.url + "/a", dest, size=len(PAYLOAD), md5=MD5)
    assert dest.read_bytes() == PAYLOAD and srv.requests == [("/a", f"bytes={len(PAYLOAD)}-")]  # answered 416


@pytest.mark.parametrize(
    "check, message",
    [
        ({"md5": "0" * 32}, f"MD5 {MD5}, expected 00000000"),
        ({"sha256": "f" * 64}, f"SHA-256 {SHA}, expected ffffffff"),
        ({"size": len(PAYLOAD) - 1}, f"size {len(PAYLOAD):,} bytes, expected {len(PAYLOAD) - 1:,}"),
    ],
)
def test_checksum_mismatch_is_a_clear_error_and_leaves_no_file(tmp_path, check, message):
    dest = tmp_path / "a.bin"
    with Server({"/a": PAYLOAD}) as srv:
        with pytest.raises(DownloadError, match=message) as e:
            fetch(srv.url + "/a", dest, **check)
    assert srv.url + "/a" in str(e.value)
    assert sorted(tmp_path.iterdir()) == []  # neither the file nor a part nor a hash record


def test_present_and_valid_file_is_not_downloaded_again(tmp_path):
    dest = tmp_path / "a.bin"
    with Server({"/a": PAYLOAD}) as srv:
        fetch(srv.url + "/a", dest, size=len(PAYLOAD), md5=MD5)
        fetch(srv.url + "/a", dest, size=len(PAYLOAD), md5=MD5)
        assert len(srv.requests) == 1
        dest.write_bytes(PAYLOAD[:-1] + b"x")  # damaged in place: an error, and still no request
        with pytest.raises(DownloadError, match="MD5"):
            fetch(srv.url + "/a", dest, size=len(PAYLOAD), md5=MD5)
        assert len(srv.requests) == 1


def test_recorded_hash_binds_a_later_download(tmp_path):
    """No official hash (like the LRA release): the first good download fixes the SHA-256."""
    dest = tmp_path / "lra_release.gz"
    with Server({"/lra": PAYLOAD}) as srv:
        fetch(srv.url + "/lra", dest)
    dest.unlink()
    with Server({"/lra": PAYLOAD[::-1]}) as srv:  # the mirror now serves something else
        with pytest.raises(DownloadError, match=f"SHA-256 [0-9a-f]{{64}}, recorded by an earlier download: {SHA}"):
            fetch(srv.url + "/lra", dest)
    assert not dest.exists() and not Path(f"{dest}.part").exists()


def test_gives_up_after_retries_and_keeps_the_part(tmp_path):
    dest = tmp_path / "a.bin"
    with Server({"/a": PAYLOAD}, cut_after=10_000, cuts=100) as srv:
        with pytest.raises(DownloadError, match="failed after 2 retries.*run again to resume"):
            fetch(srv.url + "/a", dest, retries=2)
    assert Path(f"{dest}.part").stat().st_size == 30_000 and not dest.exists()


def test_http_error_is_reported(tmp_path):
    with Server({}) as srv:
        with pytest.raises(DownloadError, match="HTTP 404"):
            fetch(srv.url + "/missing", tmp_path / "x")
    assert sorted(tmp_path.iterdir()) == []


def test_file_url_mirror(tmp_path):
    src = tmp_path / "local.tar.gz"
    src.write_bytes(PAYLOAD)
    fetch(src.as_uri(), tmp_path / "out" / "a.tar.gz", md5=MD5)
    assert (tmp_path / "out" / "a.tar.gz").read_bytes() == PAYLOAD


# --------------------------------------------------------------------------------------------------- extraction


def make_tar(path: Path, files: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


RELEASE = {
    "lra_release/listops-1000/basic_train.tsv": b"Source\tTarget\n",
    "lra_release/listops-1000/basic_val.tsv": b"Source\tTarget\n",
    "lra_release/listops-1000/basic_test.tsv": b"Source\tTarget\n",
    "lra_release/listops-1000/README": b"other",
    "lra_release/lra_release/tsv_data/new_aan_pairs.train.tsv": b"",
    "lra_release/pathfinder32/curv_contour_length_14/metadata/0.npy": b"imgs/0 sample_0.png 0 1\n",
    "lra_release/pathfinder32/curv_contour_length_14/imgs/0/sample_0.png": b"png",
    "lra_release/pathfinder32/curv_baseline/imgs/0/sample_0.png": b"png",
    "lra_release/pathfinder128/curv_contour_length_14/imgs/0/sample_0.png": b"png",
}


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != ".complete")


def test_extracts_only_what_the_task_needs(tmp_path):
    archive = make_tar(tmp_path / "lra_release.gz", RELEASE)  # a plain tar despite the name, like the release
    extract_task(archive, "listops", tmp_path / "x" / "listops", log=None)
    assert tree(tmp_path / "x" / "listops") == [
        f"lra_release/listops-1000/basic_{s}.tsv" for s in ("test", "train", "val")
    ]
    extract_task(archive, "pathfinder", tmp_path / "x" / "pathfinder", log=None)
    assert tree(tmp_path / "x" / "pathfinder") == [
        "lra_release/pathfinder32/curv_contour_length_14/imgs/0/sample_0.png",
        "lra_release/pathfinder32/curv_contour_length_14/metadata/0.npy",
    ]
    extract_task(archive, "retrieval", tmp_path / "x" / "retrieval", log=None)
    assert tree(tmp_path / "x" / "retrieval") == ["lra_release/lra_release/tsv_data/new_aan_pairs.train.tsv"]
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["listops", "pathfinder", "retrieval"]


def test_one_pass_extracts_every_requested_task(tmp_path, monkeypatch):
    archive = make_tar(tmp_path / "lra_release.gz", RELEASE, "w:gz")
    opened = []
    real_open = download_module.tarfile.open
    monkeypatch.setattr(download_module.tarfile, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    tasks = ("listops", "retrieval", "pathfinder", "pathx")
    dests = extract_tasks(archive, {t: tmp_path / "x" / t for t in tasks}, log=None)
    assert len(opened) == 1  # the archive is read once for all four tasks
    assert tree(dests["listops"]) == [f"lra_release/listops-1000/basic_{s}.tsv" for s in ("test", "train", "val")]
    assert tree(dests["retrieval"]) == ["lra_release/lra_release/tsv_data/new_aan_pairs.train.tsv"]
    assert tree(dests["pathfinder"]) == [
        "lra_release/pathfinder32/curv_contour_length_14/imgs/0/sample_0.png",
        "lra_release/pathfinder32/curv_contour_length_14/metadata/0.npy",
    ]
    assert tree(dests["pathx"]) == ["lra_release/pathfinder128/curv_contour_length_14/imgs/0/sample_0.png"]
    assert all((d / ".complete").exists() for d in dests.values())
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == sorted(tasks)  # no temporaries left
    # complete folders are reused: no second pass, not even when the archive is gone
    archive.unlink()
    assert extract_tasks(archive, {t: tmp_path / "x" / t for t in tasks}, log=None) == dests
    assert len(opened) == 1


def test_one_pass_fails_whole_when_a_task_is_missing(tmp_path):
    archive = make_tar(tmp_path / "lra_release.gz", {k: v for k, v in RELEASE.items() if "pathfinder128" not in k})
    with pytest.raises(ValueError, match="holds nothing the pathx task needs"):
        extract_tasks(archive, {t: tmp_path / "x" / t for t in ("listops", "pathx")}, log=None)
    assert list((tmp_path / "x").iterdir()) == []  # not even the task that was found


def test_extraction_is_not_repeated(tmp_path):
    archive = make_tar(tmp_path / "lra_release.gz", RELEASE)
    dest = extract_task(archive, "listops", tmp_path / "x", log=None)
    archive.write_bytes(b"gone")  # a complete extraction is reused without reading the archive
    assert extract_task(archive, "listops", tmp_path / "x", log=None) == dest


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_truncated_archive_is_named_and_leaves_nothing(tmp_path, mode):
    big = {f"lra_release/listops-1000/basic_{s}.tsv": PAYLOAD for s in ("train", "val", "test")}
    archive = make_tar(tmp_path / "lra_release.gz", big, mode)
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"lra_release\.gz: truncated or corrupt archive"):
        extract_task(archive, "listops", tmp_path / "x" / "listops", log=None)
    assert not (tmp_path / "x" / "listops").exists()
    assert list((tmp_path / "x").iterdir()) == []  # the temporary folder is gone too


def test_archive_without_the_task_and_unsafe_members(tmp_path):
    archive = make_tar(tmp_path / "other.tar", {"README": b"x"})
    with pytest.raises(ValueError, match="holds nothing the listops task needs"):
        extract_task(archive, "listops", tmp_path / "x", log=None)
    evil = make_tar(tmp_path / "evil.tar", {"../../basic_train.tsv": b"x"})
    with pytest.raises(ValueError, match=r"evil.tar: unsafe member path '../../basic_train.tsv'"):
        extract_task(evil, "listops", tmp_path / "y" / "z", log=None)
    assert not (tmp_path / "basic_train.tsv").exists()
