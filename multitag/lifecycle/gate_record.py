"""reports/gate.json: what the gate stage hands the register stage.

The architecture the gate selected, the exact candidate it judged (`Candidates.identity`), the
verdict, its evidence in one line and the tags every registered version of it carries. Written and
read here only, as a typed record (issue 24); the JSON layout is the one the gate always wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from multitag.reports import write_json


@dataclass(frozen=True)
class GateRecord:
    """The gate's record. `verdict` is `lifecycle.gate.Verdict` as JSON, kept whole for the reports
    and for people; the fields the next stage decides on are read through the properties below."""

    selected: str
    candidate: dict[str, str]
    verdict: dict
    evidence: str
    tags: dict[str, str]

    @property
    def passed(self) -> bool:
        return bool(self.verdict["passed"])

    @property
    def champion_version(self) -> str | None:
        """The champion the candidate was judged against: promotion is refused if it moved since."""
        return self.verdict["champion_version"]

    @property
    def reasons(self) -> list[str]:
        return list(self.verdict["reasons"])

    def to_json(self) -> dict:
        return {
            "selected": self.selected,
            "candidate": self.candidate,
            "verdict": self.verdict,
            "evidence": self.evidence,
            "tags": self.tags,
        }

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> GateRecord:
        record = json.loads(path.read_text())
        # a gate.json from before the evidence line was recorded reads as one without it
        return cls(record["selected"], record.get("candidate") or {}, record["verdict"], record.get("evidence", ""), record["tags"])
