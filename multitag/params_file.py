"""Write parameter overrides back into params.yaml, keeping its comments.

A Prefect run with parameters (architectures, epochs, data source) records them in
params.yaml before any stage runs, exactly as `dvc exp run -S` would, so dvc.lock always
describes what was really run and `dvc status` stays clean after a flow run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from multitag.config import load_params


def set_params(path: Path, overrides: dict[str, object]) -> bool:
    """Set `group.key` values (two levels) in place; returns whether the file changed.

    The new file is validated before it replaces the old one.
    """
    text = original = path.read_text()
    for dotted, value in overrides.items():
        text = _set_one(text, dotted, value)
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
        raise ValueError(f"{dotted} is a nested block in params.yaml; set its keys one by one instead")
    body, found = line.subn(lambda m: f"{m.group(1)} {json.dumps(value)}{m.group(3) or ''}", block.group(1), count=1)
    if not found:
        body = block.group(1) + f"  {key}: {json.dumps(value)}\n"
    return text[: block.start(1)] + body + text[block.end(1) :]
