"""Code tests for dataset downloads against a local HTTP server that supports (or ignores) Range."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from multitag.data import download
from multitag.data.download import (
    Archive,
    ChecksumError,
    Dataset,
    DownloadError,
    UnsafeArchiveError,
    download_dataset,
    download_file,
    extract_tar,
)

ARCHIVE = "vocmini.tar"


@dataclass
class FakeServer:
    """What the handler serves and how it misbehaves, plus a log of (path, Range header)."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False
    truncate_next: int = 0  # answer this many requests with only half the promised bytes
    requests: list[tuple[str, str | None]] = field(default_factory=list)


def make_handler(state: FakeServer) -> type[BaseHTTPRequestHandler]:
    class RangeHandler(BaseHTTPRequestHandler):
        """Serves `state.files` with single byte-range support (SimpleHTTPRequestHandler has none)."""

        def do_GET(self) -> None:
            path, range_header = self.path.lstrip("/"), self.headers.get("Range")
            state.requests.append((path, range_header))
            if path not in state.files:
                self.send_error(404)
                return
            body = state.files[path]
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if match is None or state.ignore_range:
                self._send(200, body, {})
            elif int(match[1]) >= len(body):
                self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
            else:
                start = int(match[1])
                self._send(206, body[start:], {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            if state.truncate_next:
                state.truncate_next -= 1
                body = body[: len(body) // 2]
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return RangeHandler


@pytest.fixture
def server() -> Iterator[FakeServer]:
    state = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def make_tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


VOC_MINI = make_tar(
    {
        "VOCdevkit/VOC2007/Annotations/000001.xml": b"<annotation><object><name>dog</name></object></annotation>",
        "VOCdevkit/VOC2007/JPEGImages/000001.jpg": bytes(range(256)) * 200,
        "VOCdevkit/VOC2007/ImageSets/Main/train.txt": b"000001\n",
    }
)
VOC_MINI_SHA256 = hashlib.sha256(VOC_MINI).hexdigest()


def test_download_dataset_verifies_extracts_and_then_skips(server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server.files[ARCHIVE] = VOC_MINI
    archive = Archive("http://official.invalid/voc/" + ARCHIVE, ARCHIVE, md5=hashlib.md5(VOC_MINI).hexdigest(), sha256=VOC_MINI_SHA256)
    monkeypatch.setitem(download.DATASETS, "voc2007", Dataset((archive,), "VOCdevkit/VOC2007"))

    root = download_dataset("voc2007", tmp_path / "raw", base_url=server.url + "/")

    assert root == tmp_path / "raw" / "VOCdevkit" / "VOC2007"
    assert (root / "ImageSets" / "Main" / "train.txt").read_text() == "000001\n"
    assert (tmp_path / "raw" / ARCHIVE).read_bytes() == VOC_MINI
    assert not (tmp_path / "raw" / f"{ARCHIVE}.part").exists()
    assert server.requests == [(ARCHIVE, None)]
    (root / "ImageSets" / "Main" / "train.txt").write_text("edited\n")
    assert download_dataset("voc2007", tmp_path / "raw", base_url=server.url) == root
    assert len(server.requests) == 1, "a verified, extracted dataset is not fetched again"
    assert (root / "ImageSets" / "Main" / "train.txt").read_text() == "edited\n", "nor extracted again"


def test_unknown_dataset_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="voc2007, voc2012"):
        download_dataset("imagenet", tmp_path)


def test_resumes_a_partial_download_with_range(server: FakeServer, tmp_path: Path) -> None:
    server.files[ARCHIVE] = VOC_MINI
    half = len(VOC_MINI) // 2
    (tmp_path / f"{ARCHIVE}.part").write_bytes(VOC_MINI[:half])

    dest = download_file(f"{server.url}/{ARCHIVE}", tmp_path / ARCHIVE, VOC_MINI_SHA256)

    assert server.requests == [(ARCHIVE, f"bytes={half}-")]
    assert dest.read_bytes() == VOC_MINI


def test_server_ignoring_range_restarts_from_scratch(server: FakeServer, tmp_path: Path) -> None:
    server.files[ARCHIVE] = VOC_MINI
    server.ignore_range = True
    (tmp_path / f"{ARCHIVE}.part").write_bytes(VOC_MINI[: len(VOC_MINI) // 2])

    dest = download_file(f"{server.url}/{ARCHIVE}", tmp_path / ARCHIVE, VOC_MINI_SHA256)

    assert server.requests[0][1] is not None, "a resume was attempted"
    assert dest.read_bytes() == VOC_MINI


def test_complete_part_file_is_not_fetched_again(server: FakeServer, tmp_path: Path) -> None:
    server.files[ARCHIVE] = VOC_MINI
    (tmp_path / f"{ARCHIVE}.part").write_bytes(VOC_MINI)

    dest = download_file(f"{server.url}/{ARCHIVE}", tmp_path / ARCHIVE, VOC_MINI_SHA256)

    assert dest.read_bytes() == VOC_MINI
    assert server.requests == [(ARCHIVE, f"bytes={len(VOC_MINI)}-")]


def test_dropped_connection_is_retried_and_resumed(server: FakeServer, tmp_path: Path) -> None:
    server.files[ARCHIVE] = VOC_MINI
    server.truncate_next = 1

    dest = download_file(f"{server.url}/{ARCHIVE}", tmp_path / ARCHIVE, VOC_MINI_SHA256, backoff_s=0)

    assert dest.read_bytes() == VOC_MINI
    assert [header for _, header in server.requests] == [None, f"bytes={len(VOC_MINI) // 2}-"]


def test_missing_file_fails_fast_without_retries(server: FakeServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="404"):
        download_file(f"{server.url}/nope.tar", tmp_path / "nope.tar", None, backoff_s=0)
    assert len(server.requests) == 1


@pytest.mark.parametrize(("sha256", "md5", "algorithm"), [("0" * 64, None, "sha256"), (None, "0" * 32, "md5")])
def test_checksum_mismatch_is_refused_and_the_next_run_starts_over(
    server: FakeServer, tmp_path: Path, sha256: str | None, md5: str | None, algorithm: str
) -> None:
    server.files[ARCHIVE] = VOC_MINI
    url = f"{server.url}/{ARCHIVE}"

    with pytest.raises(ChecksumError, match=rf"expected {algorithm}:0+ but got [0-9a-f]+.*Run the download again"):
        download_file(url, tmp_path / ARCHIVE, sha256, expected_md5=md5)

    assert list(tmp_path.iterdir()) == [], "no archive, no .part to resume, no temporary file is left"
    with pytest.raises(ChecksumError):
        download_file(url, tmp_path / ARCHIVE, sha256, expected_md5=md5)
    assert [header for _, header in server.requests] == [None, None], "refused bytes are never resumed"


def test_interrupted_run_keeps_the_part_file_and_the_next_run_resumes(server: FakeServer, tmp_path: Path) -> None:
    server.files[ARCHIVE] = VOC_MINI
    server.truncate_next = 1
    url, half = f"{server.url}/{ARCHIVE}", len(VOC_MINI) // 2

    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download_file(url, tmp_path / ARCHIVE, VOC_MINI_SHA256, retries=0)
    assert (tmp_path / f"{ARCHIVE}.part").read_bytes() == VOC_MINI[:half]
    assert not (tmp_path / ARCHIVE).exists()

    dest = download_file(url, tmp_path / ARCHIVE, VOC_MINI_SHA256, retries=0)

    assert dest.read_bytes() == VOC_MINI
    assert [header for _, header in server.requests] == [None, f"bytes={half}-"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [ARCHIVE]


def test_existing_archive_is_verified_without_a_request_and_replaced_when_corrupt(server: FakeServer, tmp_path: Path) -> None:
    server.files[ARCHIVE] = VOC_MINI
    dest = tmp_path / ARCHIVE
    dest.write_bytes(VOC_MINI)

    download_file(f"{server.url}/{ARCHIVE}", dest, VOC_MINI_SHA256)
    assert server.requests == []

    dest.write_bytes(b"not the archive")
    download_file(f"{server.url}/{ARCHIVE}", dest, VOC_MINI_SHA256)
    assert dest.read_bytes() == VOC_MINI
    assert server.requests == [(ARCHIVE, None)]


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "VOCdevkit/../../evil.txt"])
def test_path_traversal_member_is_rejected_before_anything_is_written(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "evil.tar"
    archive.write_bytes(make_tar({"VOCdevkit/ok.txt": b"ok", name: b"pwned"}))
    target = tmp_path / "raw"

    with pytest.raises(UnsafeArchiveError, match="unsafe member"):
        extract_tar(archive, target)

    assert not (target / "VOCdevkit").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_pointing_outside_is_rejected(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("VOCdevkit/escape")
        link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
        tar.addfile(link)
    archive = tmp_path / "link.tar"
    archive.write_bytes(buffer.getvalue())

    with pytest.raises(UnsafeArchiveError):
        extract_tar(archive, tmp_path / "raw")
