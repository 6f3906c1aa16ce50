"""What every benchmark shares: where the shared data sets are, a free loopback port, the
machine facts printed beside each result, and how a variant runs in a fresh child process."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
VOC_DIR = SHARED / "datasets" / "voc-real"
WEIGHTS_DIR = SHARED / "weights"
RESULTS_DIR = ROOT / "bench" / "results"
WEIGHTS_224 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def require_shared_data() -> None:
    """Exit with a clear message when ../shared (the VOC photos and weights) is not next to the repo."""
    missing = [p for p in (VOC_DIR, WEIGHTS_DIR / WEIGHTS_224) if not p.exists()]
    if missing:
        sys.exit(
            f"{', '.join(map(str, missing))} not found: this benchmark needs ../shared/datasets/voc-real "
            "and ../shared/weights next to the repository"
        )


def stage_imagenet_weights(keras_home: Path, size: int) -> None:
    """Put the 224 px MobileNetV2 no-top weights where Keras looks for them at `size` px.

    Set KERAS_HOME before keras is imported (Keras reads it once, at import).
    """
    models_dir = keras_home / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    for name in {WEIGHTS_224, WEIGHTS_224.replace("_224_", f"_{size}_")}:
        shutil.copyfile(WEIGHTS_DIR / WEIGHTS_224, models_dir / name)
    os.environ["KERAS_HOME"] = str(keras_home)


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
