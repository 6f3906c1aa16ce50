"""Content-addressed image files: each image is stored once, under its sha256, so a correction
can name an image by hash and a crash never leaves a truncated file under a valid name."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAGIC: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (  # extension, (offset, bytes) that must match
    ("jpg", ((0, b"\xff\xd8\xff"),)),
    ("png", ((0, b"\x89PNG\r\n\x1a\n"),)),
    ("webp", ((0, b"RIFF"), (8, b"WEBP"))),
    ("bmp", ((0, b"BM"),)),
    ("gif", ((0, b"GIF87a"),)),
    ("gif", ((0, b"GIF89a"),)),
)
EXTENSIONS = (*dict.fromkeys(ext for ext, _ in _MAGIC), "bin")


class ImageStore:
    """Images under `root/<first two hex digits>/<sha256>.<ext>`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def store(self, image_bytes: bytes) -> str:
        """Store the bytes under their sha256 and return it; storing the same bytes twice is a no-op.

        The file is written beside its final name and renamed into place, so a crash leaves either
        the whole image or none of it, never a truncated file under a valid hash.
        """
        sha = hashlib.sha256(image_bytes).hexdigest()
        target = self._shard(sha) / f"{sha}.{image_extension(image_bytes)}"
        try:
            os.utime(target)  # stored again: its retention clock (the file's mtime) starts over
            return sha
        except FileNotFoundError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f".{sha}.{uuid.uuid4().hex}.tmp"
        try:
            with open(temp, "wb") as handle:
                handle.write(image_bytes)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        return sha

    def path(self, sha: str) -> Path:
        """The stored file of an image; KeyError when it was never stored."""
        sha = checked_sha(sha)
        for ext in EXTENSIONS:
            path = self._shard(sha) / f"{sha}.{ext}"
            if path.exists():
                return path
        raise KeyError(f"image {sha} is not stored under {self.root}; send its bytes with add() or images.store() first")

    def size(self, sha: str) -> int:
        """Bytes the image takes on disk; 0 when it is not stored (a quota counts what is there)."""
        try:
            return self.path(sha).stat().st_size
        except (KeyError, FileNotFoundError):
            return 0

    def stored(self) -> Iterator[tuple[str, Path]]:
        """(sha256, file) of every stored image; temp files of writes in progress are not images."""
        for path in self.root.glob("??/*.*"):
            sha, _, ext = path.name.partition(".")
            if ext in EXTENSIONS and _SHA256.fullmatch(sha):
                yield sha, path

    def _shard(self, sha: str) -> Path:
        return self.root / sha[:2]


def image_extension(image_bytes: bytes) -> str:
    """The file extension from the magic bytes; 'bin' when the content is no known image format."""
    for ext, signature in _MAGIC:
        if all(image_bytes[offset : offset + len(part)] == part for offset, part in signature):
            return ext
    return "bin"


def checked_sha(sha: str) -> str:
    """A sha256 hex digest, lower-cased; ValueError for anything else."""
    sha = sha.strip().lower()
    if not _SHA256.fullmatch(sha):
        raise ValueError(f"{sha!r} is not a sha256 hex digest (64 hexadecimal characters)")
    return sha


def decoded_batches(paths: Mapping[str, Path], decode: Callable[[bytes], np.ndarray], size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stored images decoded for a model `size` at a time, as (their hashes, one stacked array): read
    lazily, so one batch is in memory however many images; a file gone or unusable (OSError,
    ValueError: ImageError is one) is skipped, since its caller can do nothing better with it."""
    hashes: list[str] = []
    arrays: list[np.ndarray] = []
    for sha, path in paths.items():
        try:
            arrays.append(decode(path.read_bytes()))
        except (OSError, ValueError):
            continue
        hashes.append(sha)
        if len(hashes) == size:
            yield hashes, np.stack(arrays)
            hashes, arrays = [], []
    if hashes:
        yield hashes, np.stack(arrays)
