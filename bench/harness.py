"""What every benchmark shares: where the shared data sets are, a free loopback port, the
machine facts printed beside each result, and how a variant runs in a fresh child process."""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
VOC_DIR = SHARED / "datasets" / "voc-real"
WEIGHTS_DIR = SHARED / "weights"
RESULTS_DIR = ROOT / "bench" / "results"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine_info() -> dict:
    """Cores, memory, load and versions: what a reader needs to compare two runs' seconds."""
    import psutil

    return {
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1min_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": metadata.version("tensorflow-cpu"),
    }


def child_command(script: str, variant: str, *arguments: str) -> list[str]:
    """The command that runs `script`'s `--child VARIANT` in a fresh interpreter (imports untimed
    in the parent, no state shared between variants)."""
    return [sys.executable, str(Path(script).resolve()), "--child", variant, *arguments]
