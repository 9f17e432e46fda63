"""Downloader against a real HTTP server on 127.0.0.1: checksums, cut transfers, resume."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import catalog
from catalog import RemoteFile, download_file, fetch_files, resolve_dataset
from utils import DatasetError

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at /good, cuts /cut after half (once), honours Range requests."""

    cut_once: set[str] = set()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = PAYLOAD
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        elif self.path == "/missing":
            self.send_error(404)
            return
        elif self.path in ("/html", "/endless", "/slow", "/slow-headers"):
            self._misbehave()
            return
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path == "/cut" and "/cut" not in self.cut_once and start == 0:
            self.cut_once.add("/cut")
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops mid-transfer
            return
        self.wfile.write(body[start:])

    def _misbehave(self) -> None:
        """/html: a page with status 200; /endless: no length, more bytes than the file; /slow:
        the file a byte at a time; /slow-headers: its headers a byte at a time, never ending."""
        if self.path == "/slow-headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Padding: ")
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        self.send_response(200)
        if self.path == "/html":
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(b"<html><body>Please log in</body></html>")
            return
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        try:
            if self.path == "/endless":
                for _ in range(4):
                    self.wfile.write(PAYLOAD)
            else:
                for byte in PAYLOAD[:50]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server():
    _Handler.cut_once = set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _remote(url: str, sha256: str | None = None, name: str = "file.bin") -> RemoteFile:
    return RemoteFile(name, url, len(PAYLOAD), sha256 or hashlib.sha256(PAYLOAD).hexdigest())


def test_good_file_is_accepted(server, tmp_path):
    dest = download_file(_remote(f"{server}/good"), tmp_path / "file.bin")
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_wrong_checksum_is_rejected_and_removed(server, tmp_path):
    with pytest.raises(DatasetError, match="SHA-256"):
        download_file(_remote(f"{server}/good", sha256="0" * 64), tmp_path / "file.bin")
    assert list(tmp_path.iterdir()) == []


def test_cut_transfer_leaves_nothing_complete_and_a_rerun_completes(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(DatasetError):
        download_file(_remote(f"{server}/cut"), dest)
    assert not dest.exists()  # only the .part file, which never passes as complete
    part = tmp_path / "file.bin.part"
    assert part.exists() and 0 < part.stat().st_size < len(PAYLOAD)
    download_file(_remote(f"{server}/cut"), dest)  # resumes with a Range request
    assert dest.read_bytes() == PAYLOAD
    assert not part.exists()


def test_http_error_is_one_clear_message(server, tmp_path):
    with pytest.raises(DatasetError, match="404"):
        download_file(_remote(f"{server}/missing"), tmp_path / "file.bin")
    assert not (tmp_path / "file.bin").exists()


def test_fetch_files_skips_complete_files(server, tmp_path):
    files = [_remote(f"{server}/good", name="a/one.bin"), _remote(f"{server}/good", name="a/two.bin")]
    fetch_files(files, tmp_path, progress=False)
    (tmp_path / "a" / "one.bin").write_bytes(b"x" * len(PAYLOAD))  # same size: counts as complete
    fetch_files(files, tmp_path, progress=False)
    assert (tmp_path / "a" / "one.bin").read_bytes() == b"x" * len(PAYLOAD)


def _manifest(tmp_path: Path, url: str) -> Path:
    entries = [
        {
            "path": f"Set5/x3/img_00{i}_SRF_3_HR.png",
            "url": url,
            "bytes": len(PAYLOAD),
            "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
        }
        for i in (1, 2)
    ]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"sets": {"Set5": {"files_by_scale": {"x3": entries}}}}))
    return path


def test_named_set_downloads_into_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "MANIFEST_PATH", _manifest(tmp_path, f"{server}/good"))
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SR_DATA_ROOT", raising=False)
    folder = resolve_dataset("set5", 3, progress=False)
    assert folder == tmp_path / "cache" / "Set5" / "x3"
    assert sorted(p.name for p in folder.iterdir()) == ["img_001_SRF_3_HR.png", "img_002_SRF_3_HR.png"]
    with pytest.raises(DatasetError, match="no scale x2"):
        resolve_dataset("Set5", 2, progress=False)


def test_offline_with_nothing_cached_says_which_folder_to_fill(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "MANIFEST_PATH", _manifest(tmp_path, "http://127.0.0.1:9/unreachable"))
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SR_DATA_ROOT", str(tmp_path / "empty"))
    for download in (True, False):
        with pytest.raises(DatasetError) as info:
            resolve_dataset("Set5", 3, download=download, progress=False)
        message = str(info.value)
        assert str(tmp_path / "cache" / "Set5" / "x3") in message and "SR_DATA_ROOT" in message
        assert "\n" not in message


def test_complete_part_file_is_verified_without_a_request(tmp_path):
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)  # killed after the transfer, before the rename
    dest = download_file(_remote("http://127.0.0.1:9/unreachable"), tmp_path / "file.bin")
    assert dest.read_bytes() == PAYLOAD


def test_data_root_holding_a_set_without_scale_folders(tmp_path, monkeypatch):
    (tmp_path / "root" / "Set5").mkdir(parents=True)
    (tmp_path / "root" / "Set5" / "a.png").write_bytes(b"")
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))
    assert (
        resolve_dataset("Set5", 3, data_root=tmp_path / "root", download=False) == tmp_path / "root" / "Set5"
    )


def test_a_page_served_with_status_200_is_refused_before_a_byte_is_kept(server, tmp_path):
    with pytest.raises(DatasetError, match="text/html page"):
        download_file(_remote(f"{server}/html"), tmp_path / "file.bin")
    assert list(tmp_path.iterdir()) == []  # no .part to resume from


def test_no_more_than_the_manifest_size_is_written(server, tmp_path):
    with pytest.raises(DatasetError, match="more than the manifest"):
        download_file(_remote(f"{server}/endless"), tmp_path / "file.bin")
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_trickles_meets_an_overall_deadline(server, tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "DOWNLOAD_DEADLINE_S", 1.0)
    started = time.monotonic()
    with pytest.raises(DatasetError, match="still unfinished after 1 s"):
        download_file(_remote(f"{server}/slow"), tmp_path / "file.bin")
    assert time.monotonic() - started < 10  # each byte came within the socket timeout; the whole did not
    assert (tmp_path / "file.bin.part").stat().st_size < len(PAYLOAD)  # kept to resume


def test_a_server_that_trickles_its_headers_meets_the_deadline_too(server, tmp_path, monkeypatch):
    # [16] N8: each header byte came within the socket timeout, so the answer never timed out
    monkeypatch.setattr(catalog, "DOWNLOAD_DEADLINE_S", 1.0)
    started = time.monotonic()
    with pytest.raises(DatasetError, match="unfinished after 1 s"):
        download_file(_remote(f"{server}/slow-headers"), tmp_path / "file.bin")
    assert time.monotonic() - started < 5  # the server would trickle for 20 s
    assert not (tmp_path / "file.bin").exists()
