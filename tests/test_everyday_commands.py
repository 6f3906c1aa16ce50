"""Everyday commands print what a person reads (issue 23): `multitag predict` without TensorFlow's
native start-up banner, and `registry list` without loading TensorFlow at all (11.7 s -> 4.6 s)."""

from __future__ import annotations

import os
import subprocess
import sys

from corpus import encode, solid


def run_fresh(arguments: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """A new interpreter, as a person's shell starts one: TensorFlow not loaded yet."""
    return subprocess.run([sys.executable, *arguments], env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_predict_prints_the_answer_without_tensorflows_start_up_lines(registry_env, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode(solid("everyday-photo", (64, 48)), "PNG"))
    done = run_fresh(["-m", "multitag.cli", "predict", registry_env.model_uri, str(photo)], {**registry_env.env, "COLUMNS": "400"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{photo}:" in done.stdout
    for banner in ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard", "XNNPACK delegate"):
        assert banner not in done.stderr, f"{banner!r} printed:\n{done.stderr[-2000:]}"


def test_registry_list_does_not_load_tensorflow(registry_env, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"registry:\n  model_name: {registry_env.name}\n")
    script = (
        "import sys; from typer.testing import CliRunner; from multitag.cli import app; "
        f"result = CliRunner().invoke(app, ['registry', 'list', '--params', {str(params)!r}]); "
        "print(result.output); print('tensorflow loaded:', 'tensorflow' in sys.modules)"
    )
    done = run_fresh(["-c", script], registry_env.env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "champion" in done.stdout and "tensorflow loaded: False" in done.stdout, done.stdout[-2000:]
