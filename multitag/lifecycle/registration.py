"""reports/registration.json: what the register stage hands whoever ran it (the CLI, the flows).

Every version registered by architecture, the one the gate judged, the verdict and the champion
after the run: what every run's last sentence is made of. Written and read here only, as a typed
record (issue 24); the JSON layout is the one the stage always wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from multitag.reports import JsonRecord, write_json


@dataclass(frozen=True)
class Registration(JsonRecord):
    """The register stage's record. `verdict` is "passed" or "failed"; `champion_version` is the
    champion after the run (None: nothing is served for this model name)."""

    model_name: str
    versions: dict[str, str]
    selected: str
    selected_version: str
    verdict: str
    reasons: list[str]
    evidence: str
    champion_version: str | None

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    @classmethod
    def from_json(cls, record: dict) -> Registration:
        """From the record's JSON, or from a larger dict that holds it (a retraining flow's result).
        A record from before the evidence line was kept reads as one without it."""
        return super().from_json({"evidence": "", **record})

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> Registration:
        return cls.from_json(json.loads(path.read_text()))
