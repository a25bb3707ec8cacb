"""Reading from a hostile or broken HTTP server: an HTTP server on 127.0.0.1, started by a fixture,
that ignores range requests, cuts bodies short, stalls, loops redirects. Every run ends with one
line naming the URL, within its timeout; a compressed archive is read as a stream from a server
without range support."""
from __future__ import annotations

import http.server
import io
import socket
import tarfile
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("aiohttp")
pytest.importorskip("fsspec")

from ppdata.cli import cli  # noqa: E402


def ppdata(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)


def _archive(gz: bool) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for cls in ("cat", "dog"):
            for i in range(3):
                img = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(img, format="PNG")
                info = tarfile.TarInfo(f"train/{cls}/{i}.png")
                info.size = img.tell()
                img.seek(0)
                tf.addfile(info, img)
    return buf.getvalue()


FILES = {"a.tar.gz": _archive(True), "a.tar": _archive(False)}


class Hostile(http.server.BaseHTTPRequestHandler):
    """``/<mode>/<file>``: ``norange`` (200 and the whole body, whatever Range says), ``short``
    (the body cut at half its Content-Length), ``stall`` (headers, then nothing), ``loop`` (a
    redirect to itself); anything else is 404."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _head(self, body: bytes, length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()

    def do_HEAD(self):
        mode, _, name = self.path.strip("/").partition("/")
        if mode == "loop":
            return self._redirect()
        if name not in FILES:
            self.send_error(404)
            return
        self._head(FILES[name])

    def _redirect(self):
        self.send_response(302)
        self.send_header("Location", self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        mode, _, name = self.path.strip("/").partition("/")
        if mode == "loop":
            return self._redirect()
        if name not in FILES:
            self.send_error(404)
            return
        body = FILES[name]
        if mode == "norange":
            self._head(body)
            self.wfile.write(body)
        elif mode == "short":
            self._head(body)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif mode == "stall":
            self._head(body)
            self.wfile.flush()
            time.sleep(20)
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def restore_timeout(monkeypatch):
    """``--timeout`` sets PPDATA_TIMEOUT for the process (worker processes read it): undo it."""
    monkeypatch.setenv("PPDATA_TIMEOUT", "60")


def one_line(r, url: str, *words: str) -> None:
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert url in lines[0], r.output
    for w in words:
        assert w in lines[0], r.output


def test_a_compressed_archive_is_read_as_a_stream_from_a_server_without_ranges(server, tmp_path):
    r = ppdata("--timeout", "10", "encrypt", "folder", f"{server}/norange/a.tar.gz", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert "train 6" in r.output


def test_an_uncompressed_tar_needs_ranges_and_is_refused_in_one_line(server, tmp_path):
    url = f"{server}/norange/a.tar"
    one_line(ppdata("--timeout", "10", "encrypt", "folder", url, "--out", tmp_path / "o"), url, "range requests")
    assert not (tmp_path / "o").exists()


def test_a_body_cut_short_is_one_line(server, tmp_path):
    url = f"{server}/short/a.tar.gz"
    one_line(ppdata("--timeout", "10", "encrypt", "folder", url, "--out", tmp_path / "o"), url)


def test_a_stalled_server_ends_within_the_timeout(server, tmp_path):
    url = f"{server}/stall/a.tar.gz"
    t = time.perf_counter()
    r = ppdata("--timeout", "2", "encrypt", "folder", url, "--out", tmp_path / "o")
    assert time.perf_counter() - t < 15
    one_line(r, url, "2 s timeout")


def test_a_redirect_loop_is_not_a_missing_file(server, tmp_path):
    url = f"{server}/loop/a.tar.gz"
    one_line(ppdata("--timeout", "10", "encrypt", "folder", url, "--out", tmp_path / "o"), url, "redirect")


def test_a_missing_file_is_one_line(server, tmp_path):
    url = f"{server}/norange/nothing.tar.gz"
    one_line(ppdata("--timeout", "10", "encrypt", "folder", url, "--out", tmp_path / "o"), url, "does not exist")
