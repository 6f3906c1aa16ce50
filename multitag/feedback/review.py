"""Which logged images are most worth a human look (issue 13, active learning).

A label costs a person's attention, so the review list asks for the labels that teach the next
model most: images on which the champion and the challenger disagree (a label decides which of
the two is right), then images whose scores sit closest to a class threshold (the model is
unsure). Images someone has labelled already and images no longer stored are left out, each
image appears once (its newest answer), and a diversity rule keeps twenty near-identical photos
from filling the list: a candidate whose scores are all within `min_distance` of an image already
picked is skipped (it comes up again once the picked one is corrected).

The ranking (`rank`, `pick_diverse`, `review_list`) is pure: it sees logged answers and
thresholds, never a database. `suggest` gathers them from the prediction log and the feedback
queue for the API (GET /review) and the CLI (`multitag feedback suggest`).

A newly served version has answered nothing yet, so after each promotion the server re-scores the
stored photos that earlier versions answered and nobody has labelled (`to_rescore`, run by
serving/rescore.py) and logs those answers with role `rescored`, which the list ranks beside what
users were answered (drift does not: no user got them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from multitag.feedback.predictions import SERVED_ROLES, LoggedPrediction, PredictionLog
from multitag.feedback.queue import FeedbackQueue

MIN_DISTANCE = 0.05  # two images whose scores all differ by less than this count as near-identical
SCAN_LIMIT = 5_000  # the newest answers ranked per request, and the photos re-scored per switch: bounds the work
_CLIP = 1e-6  # scores and thresholds of exactly 0 or 1 have infinite logits


@dataclass(frozen=True)
class Candidate:
    """One image's newest champion answer, with the challenger's newest answer for it when shadow mode gave one."""

    answer: LoggedPrediction
    challenger: LoggedPrediction | None = None


@dataclass(frozen=True)
class ReviewItem:
    """An image worth a look, and why: `margin` is how far (in logits) its most uncertain class is from the threshold."""

    image_sha256: str
    model_version: str
    labels: tuple[str, ...]
    scores: dict[str, float]
    predicted_at: float
    closest_class: str
    margin: float
    disagreement: bool
    challenger_labels: tuple[str, ...] | None
    challenger_version: str | None
    reason: str


def logit(p: float) -> float:
    """log(p / (1 - p)), clipped so that 0 and 1 stay finite: distances in logits treat 0.50 vs 0.55
    and 0.990 vs 0.995 alike as real doubt, which distances in probability do not."""
    p = min(max(p, _CLIP), 1 - _CLIP)
    return math.log(p / (1 - p))


def closest_to_threshold(scores: Mapping[str, float], thresholds: Mapping[str, float]) -> tuple[str, float] | None:
    """The class whose score is nearest its threshold and that distance in logits; None when no class has both."""
    margins = [(abs(logit(scores[name]) - logit(threshold)), name) for name, threshold in thresholds.items() if name in scores]
    if not margins:
        return None
    margin, name = min(margins)
    return name, margin


def newest_per_image(answers: Iterable[LoggedPrediction]) -> list[LoggedPrediction]:
    """One answer per image hash, the newest (an image sent ten times is one review, judged as last answered)."""
    newest: dict[str, LoggedPrediction] = {}
    for answer in answers:
        kept = newest.get(answer.image_sha256)
        if kept is None or (answer.predicted_at, answer.id) > (kept.predicted_at, kept.id):
            newest[answer.image_sha256] = answer
    return list(newest.values())


def review_item(candidate: Candidate, thresholds: Mapping[str, float]) -> ReviewItem | None:
    """The candidate with its margin, disagreement and reason; None when it shares no class with `thresholds`."""
    answer, challenger = candidate.answer, candidate.challenger
    closest = closest_to_threshold(answer.scores, thresholds)
    if closest is None:
        return None
    name, margin = closest
    disputed = sorted(set(answer.labels) ^ set(challenger.labels)) if challenger is not None else []
    if disputed:
        reason = f"champion and challenger (v{challenger.model_version}) disagree on {', '.join(disputed)}"
    else:
        reason = f"least sure about {name}: {answer.scores[name]:.2f} against its threshold {thresholds[name]:.2f}"
    return ReviewItem(
        image_sha256=answer.image_sha256,
        model_version=answer.model_version,
        labels=answer.labels,
        scores=answer.scores,
        predicted_at=answer.predicted_at,
        closest_class=name,
        margin=margin,
        disagreement=bool(disputed),
        challenger_labels=challenger.labels if challenger is not None else None,
        challenger_version=challenger.model_version if challenger is not None else None,
        reason=reason,
    )


def rank(candidates: Iterable[Candidate], thresholds: Mapping[str, float]) -> list[ReviewItem]:
    """Most worth a look first: disagreements before agreements (a strong reason beats any doubt),
    then the smallest margin, then the newest answer."""
    items = [item for candidate in candidates if (item := review_item(candidate, thresholds)) is not None]
    return sorted(items, key=lambda item: (not item.disagreement, item.margin, -item.predicted_at))


def near_duplicates(a: Mapping[str, float], b: Mapping[str, float], min_distance: float) -> bool:
    """Whether every class's score differs by less than `min_distance`: the model sees the same picture."""
    return all(abs(a.get(name, 0.0) - b.get(name, 0.0)) < min_distance for name in a.keys() | b.keys())


def pick_diverse(ranked: Iterable[ReviewItem], n: int, min_distance: float = MIN_DISTANCE) -> list[ReviewItem]:
    """The first `n` of `ranked` (in order) that are no near-duplicate of one picked before them."""
    picked: list[ReviewItem] = []
    for item in ranked:
        if len(picked) == n:
            break
        if not any(near_duplicates(item.scores, chosen.scores, min_distance) for chosen in picked):
            picked.append(item)
    return picked


def review_list(
    candidates: Iterable[Candidate],
    thresholds: Mapping[str, float],
    n: int,
    labelled: Collection[str] = frozenset(),
    stored: Callable[[str], bool] = lambda sha: True,
    min_distance: float = MIN_DISTANCE,
) -> list[ReviewItem]:
    """The `n` images most worth a look: ranked, without `labelled` ones or those `stored` says are gone, diverse.

    `stored` is asked only about images that would be picked, so a long log costs few file checks.
    """
    ranked = (item for item in rank(candidates, thresholds) if item.image_sha256 not in labelled)
    return pick_diverse((item for item in ranked if stored(item.image_sha256)), n, min_distance)


# -- gathering the candidates ----------------------------------------------------------------------


def suggest(
    log: PredictionLog,
    queue: FeedbackQueue,
    model_name: str,
    model_version: str,
    thresholds: Mapping[str, float],
    n: int,
    max_age_s: float,
    now: float | None = None,
) -> list[ReviewItem]:
    """The review list over the served version's answers (to users, or re-scored) of the last `max_age_s`
    seconds (the image retention: older images are gone), each with the challenger's newest answer for the image."""
    since = (time.time() if now is None else now) - max_age_s
    answers = newest_per_image(log.answered_since(model_name, model_version, since, SCAN_LIMIT, SERVED_ROLES))
    hashes = [answer.image_sha256 for answer in answers]
    challengers = log.latest_by_image(model_name, hashes)
    candidates = [Candidate(answer, challengers.get(answer.image_sha256)) for answer in answers]
    return review_list(candidates, thresholds, n, queue.named_images(hashes), lambda sha: _stored(queue, sha) is not None)


def to_rescore(
    log: PredictionLog,
    queue: FeedbackQueue,
    model_name: str,
    model_version: str,
    max_age_s: float,
    limit: int = SCAN_LIMIT,
    now: float | None = None,
) -> dict[str, Path]:
    """{sha: stored file} of the photos `model_version` should score so that the review list can rank
    them: answered by other versions of `model_name` in the last `max_age_s` seconds (the image
    retention), not by this version, nobody's correction, still stored; the newest of at most `limit`."""
    since = (time.time() if now is None else now) - max_age_s
    hashes = log.unanswered_by(model_name, model_version, since, limit)
    labelled = queue.named_images(hashes)
    return {sha: path for sha in hashes if sha not in labelled and (path := _stored(queue, sha)) is not None}


def _stored(queue: FeedbackQueue, sha: str) -> Path | None:
    try:
        return queue.images.path(sha)
    except KeyError:
        return None


def as_rows(items: Iterable[ReviewItem]) -> Iterator[dict]:
    """The items as plain dicts (JSON for the CLI and the API)."""
    for item in items:
        yield {
            "image_sha256": item.image_sha256,
            "model_version": item.model_version,
            "labels": list(item.labels),
            "probabilities": item.scores,
            "predicted_at": item.predicted_at,
            "closest_class": item.closest_class,
            "margin": item.margin,
            "disagreement": item.disagreement,
            "challenger_labels": list(item.challenger_labels) if item.challenger_labels is not None else None,
            "challenger_version": item.challenger_version,
            "reason": item.reason,
        }
