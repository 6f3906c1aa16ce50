"""Download public datasets: resumable, checksummed, and extracted safely.

pooch gives an archive its final name only when the checksum matches, so a final name on disk
always means a verified archive. pooch cannot resume, so our downloader streams into `<file>.part`
and continues it with an HTTP `Range` request after an interruption. Extraction refuses members
that would land outside the target folder and leaves a marker, so running the download again
costs one checksum pass.

The registry's checksums are the MD5 sums that torchvision's VOC loaders check; no published
SHA-256 was found for these archives, so `sha256` stays None and the MD5 is verified.
"""

from __future__ import annotations

import http.client
import posixpath
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pooch
from rich.console import Console
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

from multitag.errors import MultitagError

VOC_HOST = "http://host.robots.ox.ac.uk/pascal/VOC"
TIMEOUT_S = 60
console = Console(stderr=True)


@dataclass(frozen=True)
class Archive:
    """One file to fetch; at least one checksum should be known to catch corrupt downloads."""

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Dataset:
    """Archives that are all extracted into the raw folder, and where the dataset root ends up."""

    archives: tuple[Archive, ...]
    root: str  # relative to the raw folder once every archive is extracted


DATASETS: dict[str, Dataset] = {
    "voc2007": Dataset(
        archives=(
            Archive(
                f"{VOC_HOST}/voc2007/VOCtrainval_06-Nov-2007.tar", "VOCtrainval_06-Nov-2007.tar", md5="c52e279531787c972589f7e41ab4ae64"
            ),  # 460,032,000 bytes
            Archive(
                f"{VOC_HOST}/voc2007/VOCtest_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar", md5="b6e924de25625d8de591ea690078ad9f"
            ),  # 451,020,800 bytes
        ),
        root="VOCdevkit/VOC2007",
    ),
    "voc2012": Dataset(
        archives=(
            Archive(
                f"{VOC_HOST}/voc2012/VOCtrainval_11-May-2012.tar", "VOCtrainval_11-May-2012.tar", md5="6cd6e144f989b92b3379bac3b3de84fd"
            ),  # 1,999,639,040 bytes
        ),
        root="VOCdevkit/VOC2012",
    ),
}


class DownloadError(MultitagError, RuntimeError):
    """A download could not be completed; the message says what to do next."""


class ChecksumError(DownloadError):
    """The downloaded bytes are not the expected archive."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the extraction folder."""


def download_dataset(name: str, raw_dir: Path, base_url: str | None = None) -> Path:
    """Download and extract a registered dataset; return its root, e.g. data/raw/VOCdevkit/VOC2007.

    `base_url` replaces the official host with a mirror that serves the archives flat, as
    `<base_url>/<filename>` (e.g. https://pjreddie.com/media/files); checksums still apply.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    dataset = DATASETS[name]
    raw_dir = Path(raw_dir)
    for archive in dataset.archives:
        url = archive.url if base_url is None else f"{base_url.rstrip('/')}/{archive.filename}"
        path = download_file(url, raw_dir / archive.filename, archive.sha256, expected_md5=archive.md5)
        extract_tar(path, raw_dir)
    root = raw_dir / dataset.root
    if not root.is_dir():
        raise DownloadError(
            f"{name} was extracted into {raw_dir}, but {root} is missing: the archives do not have the expected layout. Check base_url."
        )
    return root


def download_file(
    url: str,
    dest: Path,
    expected_sha256: str | None,
    chunk: int = 1 << 20,
    *,
    expected_md5: str | None = None,
    retries: int = 4,
    backoff_s: float = 2.0,
) -> Path:
    """Fetch `url` to `dest` through pooch, resuming `dest.part`; refuse bytes with another checksum.

    The SHA-256 is checked when known, else the MD5. An existing `dest` is re-verified rather
    than fetched again. Connection errors, server errors (5xx) and early-closed streams are
    retried `retries` times, waiting `backoff_s`, then twice as long, and so on; every retry resumes.
    """
    dest = Path(dest)
    known_hash = f"sha256:{expected_sha256}" if expected_sha256 else f"md5:{expected_md5}" if expected_md5 else None
    downloader = ResumableDownloader(dest.with_name(dest.name + ".part"), chunk, retries, backoff_s)
    try:
        pooch.retrieve(url, known_hash, fname=dest.name, path=dest.parent, downloader=downloader)
    except ValueError as err:  # pooch's checksum mismatch; it has already deleted the bytes
        raise ChecksumError(
            f"{dest.name}: {err} Run the download again; if it fails again, the server (or base_url "
            "mirror) serves a different file: use the official URL or another mirror."
        ) from err
    return dest


@dataclass(frozen=True)
class ResumableDownloader:
    """A pooch downloader that keeps `part` between runs and resumes it with an HTTP Range request.

    pooch hands over a temporary file that it deletes when a run fails, so the bytes collect in
    `part`, a path of our own beside it, and move into pooch's file only once complete.
    """

    part: Path
    chunk: int
    retries: int
    backoff_s: float

    def __call__(self, url: str, output_file: str, pooch_instance: pooch.Pooch | None) -> None:
        for attempt in range(self.retries + 1):
            try:
                _fetch(url, self.part, self.chunk)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as err:
                if not _is_transient(err):
                    raise DownloadError(
                        f"{url} cannot be downloaded: {err}. Check the URL, or the base_url "
                        "mirror, which must serve every archive as <base_url>/<filename>."
                    ) from err
                if attempt == self.retries:
                    raise DownloadError(
                        f"could not download {url} after {self.retries + 1} attempts: {err}. The partial file "
                        f"{self.part} is kept: run the same command again to resume, or pass base_url to use a mirror."
                    ) from err
                wait = self.backoff_s * 2**attempt
                console.print(f"[yellow]{url}: {err}; retrying in {wait:.0f} s[/yellow]")
                time.sleep(wait)
        self.part.replace(output_file)


def extract_tar(archive: Path, target_dir: Path) -> Path:
    """Extract `archive` into `target_dir` once; refuse members that would escape it.

    Every member is checked before anything is written, so a malicious archive leaves no
    files behind; `filter="data"` then also drops device files and unsafe permissions.
    """
    archive, target_dir = Path(archive), Path(target_dir)
    marker = target_dir / f".{archive.name}.extracted"
    if marker.exists():
        return target_dir
    target_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member, archive)
        console.print(f"Extracting {archive.name} into {target_dir}")
        tar.extractall(target_dir, members=members, filter="data")
    marker.write_text(f"{archive.name}\n")
    return target_dir


def _fetch(url: str, part: Path, chunk: int) -> None:
    """Append the rest of `url` to `part`; start over when the server ignores the Range header."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        if _total_from_content_range(err.headers.get("Content-Range", "")) == offset:
            return  # the previous run had already received every byte
        part.unlink()  # the partial file is longer than the resource: it cannot be resumed
        return _fetch(url, part, chunk)
    with response:
        if offset and response.status != 206:
            offset = 0  # a full 200 answer: the server does not resume
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        received = offset
        columns = (*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
        with part.open("ab" if offset else "wb") as out, Progress(*columns, console=console) as progress:
            task = progress.add_task(part.name.removesuffix(".part"), total=total, completed=offset)
            while block := response.read(chunk):
                out.write(block)
                received += len(block)
                progress.update(task, completed=received)
    if total is not None and received < total:
        raise ConnectionError(f"connection closed after {received:,} of {total:,} bytes")


def _is_transient(err: Exception) -> bool:
    """Retry network trouble and server errors; a 4xx answer will not change by retrying."""
    return not isinstance(err, urllib.error.HTTPError) or err.code >= 500


def _total_from_content_range(value: str) -> int | None:
    """The full size from a `Content-Range: bytes */<size>` header, if the server sent one."""
    size = value.rpartition("/")[2].strip()
    return int(size) if size.isdigit() else None


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Reject absolute names, `..` in names, and links that resolve outside the target folder."""
    name = PurePosixPath(member.name)
    unsafe = name.is_absolute() or ".." in name.parts
    if member.issym() or member.islnk():
        base = name.parent if member.issym() else PurePosixPath()
        link = posixpath.normpath(base / member.linkname)
        unsafe = unsafe or PurePosixPath(link).is_absolute() or link.split("/")[0] == ".."
    if unsafe:
        raise UnsafeArchiveError(
            f"{archive.name} holds the unsafe member {member.name!r} (it would be written outside "
            "the target folder); nothing was extracted. Delete the archive and download it again "
            "from a trusted source."
        )
