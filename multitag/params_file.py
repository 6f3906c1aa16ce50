"""Write parameter overrides back into params.yaml, keeping its comments.

A Prefect run with parameters (architectures, epochs, data source) records them in
params.yaml before any stage runs, exactly as `dvc exp run -S` would, so dvc.lock always
describes what was really run and `dvc status` stays clean after a flow run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from multitag.config import load_params


def set_params(path: Path, overrides: dict[str, object]) -> bool:
    """Set `group.key` values (two levels) in place; returns whether the file changed.

    The new file is validated before it replaces the old one.
    """
    text = original = path.read_text()
    try:
        for dotted, value in overrides.items():
            text = _set_one(text, dotted, value)
    except _BlockValue:
        text = _rewrite(original, overrides)
    if text == original:
        return False
    candidate = path.with_suffix(".yaml.new")
    candidate.write_text(text)
    try:
        load_params(candidate)
    except Exception:
        candidate.unlink()
        raise
    candidate.replace(path)
    return True


@contextmanager
def set_for_run(path: Path, overrides: dict[str, object], on_restore=None) -> Iterator[None]:
    """Set `overrides` in `path` for the run in the block; should the run fail, put back the text
    the file had before (a dataset that failed validation must not stay configured: the server, the
    nightly retraining and `dvc repro` would all follow it), then call `on_restore(path)` to say so.

    A file someone else changed during the run is left as they left it."""
    before = path.read_text()
    set_params(path, overrides)
    written = path.read_text()
    try:
        yield
    except BaseException:
        if path.read_text() == written:
            path.write_text(before)
            if on_restore is not None:
                on_restore(path)
        raise


class _BlockValue(Exception):
    """The key's value is a YAML block, which a line edit cannot replace."""


def _rewrite(text: str, overrides: dict[str, object]) -> str:
    """Fallback for block-style values: load, set, dump (comments are lost, values are not)."""
    tree = yaml.safe_load(text) or {}
    for dotted, value in overrides.items():
        group, _, key = dotted.partition(".")
        tree.setdefault(group, {})[key] = value
    return yaml.safe_dump(tree, sort_keys=False)


def _set_one(text: str, dotted: str, value: object) -> str:
    group, _, key = dotted.partition(".")
    if not key or "." in key:
        raise ValueError(f"override {dotted!r} must be 'group.key'")
    block = re.search(rf"(?ms)^{re.escape(group)}:\n(.*?)(?=^\S|\Z)", text)
    if block is None:
        raise ValueError(f"params file has no group {group!r}")
    line = re.compile(rf"(?m)^(  {re.escape(key)}:)[^\S\n]*([^#\n]*?)([^\S\n]*#.*)?$")
    current = line.search(block.group(1))
    if current is not None and not current.group(2).strip():
        raise _BlockValue(dotted)
    if current is not None and yaml.safe_load(current.group(2)) == value:
        return text  # the same value: the line (its quoting, its comment) stays as the person wrote it
    body, found = line.subn(lambda m: f"{m.group(1)} {yaml_value(value)}{m.group(3) or ''}", block.group(1), count=1)
    if not found:
        body = block.group(1) + f"  {key}: {yaml_value(value)}\n"
    return text[: block.start(1)] + body + text[block.end(1) :]


def yaml_value(value: object) -> str:
    """A value as a person would write it on one line: `synthetic`, `[small_cnn, mobilenetv2]`,
    quoted only where YAML needs it (`'null'` for the string null)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()
