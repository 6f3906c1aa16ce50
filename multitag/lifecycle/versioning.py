"""Versions that tie a model to its code and data: git commit and DVC's hash of the arrays."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path


def git_commit(root: Path = Path(".")) -> str:
    """HEAD's sha, suffixed `-dirty` when tracked files changed; 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tracked(path: Path) -> bool:
    """What `.dvcignore` leaves in: Python bytecode is not part of a code folder's content."""
    return path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"


def dvc_dir_hash(directory: Path) -> str:
    """The md5 DVC records for a directory (`<md5>.dir`): the same value as in dvc.lock,
    so a model's tag can be matched to a data version without running DVC."""
    entries = [
        {"md5": _md5(path), "relpath": path.relative_to(directory).as_posix()}
        for path in sorted(p for p in directory.rglob("*") if _tracked(p))
    ]
    entries.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"
