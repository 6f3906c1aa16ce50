"""The feedback queue's records: an item as stored (`FeedbackItem`), what a correction says of each
class (`Truth`), what a correction may say besides its image and labels (`CorrectionDetails`), what
adding one did (`AddResult`), the errors a claim or an add can end with, and the conversions
between those and the stored columns. queue.py is the state machine over them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict

from multitag.data.manifest import normalize_labels
from multitag.errors import MultitagError
from multitag.feedback.schema import Origin, State


class ClaimLost(MultitagError, RuntimeError):
    """A run acked items it no longer holds: its lease ran out and another run took them, or they were rejected."""


class OpenInAnotherTask(MultitagError, RuntimeError):
    """The same correction (image, labels, absent set) is open in another task: one open item per
    correction holds across tasks (`feedback_open_once`), until that one is consumed or rejected."""


class CorrectionDetails(TypedDict, total=False):
    """The keywords FeedbackQueue.add and add_by_sha take besides the image and its labels; each may
    be left out (the queue then stores None, and origin 'upload')."""

    model_version: str | None  # the version whose answer this corrects
    note: str | None
    origin: Origin  # where it came from: a user's upload, the review list, a folder import
    client: str | None  # who sent it: a keyed hash, never an address; None: the operator (CLI, import)
    absent: Iterable[str] | None  # None: every class not in the labels is absent; a list: only those, the others unknown


@dataclass(frozen=True)
class AddResult:
    id: int
    image_sha256: str
    merged: bool


@dataclass(frozen=True)
class FeedbackItem:
    id: int
    image_sha256: str
    labels: tuple[str, ...]
    model_version: str | None
    note: str | None
    received_at: float
    state: State
    claimed_by: str | None
    lease_expires_at: float | None
    consumed_by: str | None
    reason: str | None
    updated_at: float
    origin: Origin = "upload"
    client: str | None = None
    absent: tuple[str, ...] | None = None  # None: every class not in labels is absent; a tuple: only these, the others unknown
    task: str | None = None  # the registered model it corrects; None: unassigned


@dataclass(frozen=True)
class Truth:
    """What a correction says of each class: present, absent, or (partial labels) nothing."""

    labels: frozenset[str]
    absent: frozenset[str] | None = None  # None: labelled in full, every class not in labels absent

    def knows(self, name: str) -> bool:
        """Whether the correction says anything about `name`: a blank box of a partial one says nothing."""
        return name in self.labels or self.absent is None or name in self.absent


def truth(labels_json: str, absent_json: str) -> Truth:
    """A stored correction's labels and absent set as a `Truth`."""
    absent = json.loads(absent_json)
    return Truth(frozenset(json.loads(labels_json)), None if absent is None else frozenset(absent))


def absent_to_json(labels: Iterable[str], absent: Iterable[str] | None) -> str:
    """The stored form of `absent`: `null` (labelled in full) or a sorted JSON list; a class both
    present and absent is a ValueError, since the correction contradicts itself."""
    if absent is None:
        return "null"
    absent = normalize_labels(absent)
    if both := sorted(set(absent) & set(normalize_labels(labels))):
        raise ValueError(f"{', '.join(both)} cannot be both present and absent")
    return json.dumps(absent)


def item_of(row) -> FeedbackItem:
    absent = json.loads(row.absent)
    return FeedbackItem(**{**row._asdict(), "labels": tuple(json.loads(row.labels)), "absent": None if absent is None else tuple(absent)})
