"""The shadow report: how the challenger answered the images the champion answered (issue 13, part 5).

While a `challenger` alias exists, the API scores every /predict image with it too, off the
response path (serving/shadow.py), and logs its answer with role `challenger` beside the
champion's. This module reads those pairs back from the prediction log:

- per class, on the classes both models know: how often the two agree, how often each would
  have tagged it, and, for images with a correction in the feedback queue, how often each was right;
- overall: agreement over every (image, class) and the share of images whose label sets match;
- `guard_promotion`: before `multitag registry promote` makes the challenger champion, its report
  against the gate's shadow settings (`gate.shadow_min_agreement`, `gate.shadow_require_feedback_win`);
  the rule itself is lifecycle/policy.py's `shadow_refusals`, beside the gate's other rules.

One pair per image: an image sent a hundred times weighs as much as one sent once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from multitag.config import Params
from multitag.errors import MultitagError, UsageError
from multitag.feedback.predictions import LoggedPrediction, PredictionLog
from multitag.feedback.queue import FeedbackQueue, Truth
from multitag.lifecycle import policy, registry

DEFAULT_LIMIT = 10_000  # the newest shadowed images a report reads
OVERRIDE = "override with `multitag registry promote VERSION --ignore-shadow`"


class ShadowGateError(MultitagError, RuntimeError):
    """The gate's shadow settings refuse to promote the challenger: the message gives the numbers and the override."""


@dataclass(frozen=True)
class ClassShadow:
    """One class over the paired images: agreement and tag rates, and right answers on corrected images."""

    name: str
    images: int
    agreement: float
    champion_tag_rate: float
    challenger_tag_rate: float
    feedback_images: int = 0
    champion_correct: int = 0
    challenger_correct: int = 0


@dataclass(frozen=True)
class ShadowReport:
    """The champion's and the challenger's answers to the same images, compared on their shared classes."""

    model_name: str
    champion_version: str | None  # None: paired with whichever champion answered
    challenger_version: str
    images: int
    agreement: float | None  # over every (image, shared class); None without images
    exact_agreement: float | None  # images whose label sets match on the shared classes
    feedback_images: int
    champion_correct: int  # (image, class) answers matching the correction, over corrected images
    challenger_correct: int
    classes: list[ClassShadow] = field(default_factory=list)
    champion_only_classes: list[str] = field(default_factory=list)  # not compared: the other model does not know them
    challenger_only_classes: list[str] = field(default_factory=list)


def build_report(
    pairs: Iterable[tuple[LoggedPrediction, LoggedPrediction]],
    corrections: dict[str, Truth],
    model_name: str,
    challenger_version: str,
    champion_version: str | None = None,
) -> ShadowReport:
    """The report over (champion, challenger) answer pairs of the same images; `corrections` maps an
    image hash to its correction, which judges only the classes it knows (a partial correction's
    blank boxes judge nothing). A model's classes are the keys of its logged scores."""
    pairs = list(pairs)
    order: dict[str, None] = {}  # shared classes in the champion's order of first appearance
    champion_only: dict[str, None] = {}
    challenger_only: dict[str, None] = {}
    counts: dict[str, dict[str, int]] = {}
    exact = 0
    for champion, challenger in pairs:
        shared = [c for c in champion.scores if c in challenger.scores]
        champion_only.update(dict.fromkeys(c for c in champion.scores if c not in challenger.scores))
        challenger_only.update(dict.fromkeys(c for c in challenger.scores if c not in champion.scores))
        truth = corrections.get(champion.image_sha256)
        matched = True
        for name in shared:
            order.setdefault(name)
            said_champion, said_challenger = name in champion.labels, name in challenger.labels
            tally = counts.setdefault(
                name, dict.fromkeys(("images", "agree", "champion", "challenger", "fb", "fb_champion", "fb_challenger"), 0)
            )
            tally["images"] += 1
            tally["agree"] += said_champion == said_challenger
            tally["champion"] += said_champion
            tally["challenger"] += said_challenger
            matched &= said_champion == said_challenger
            if truth is not None and truth.knows(name):
                tally["fb"] += 1
                tally["fb_champion"] += said_champion == (name in truth.labels)
                tally["fb_challenger"] += said_challenger == (name in truth.labels)
        exact += matched
    classes = [
        ClassShadow(
            name,
            t["images"],
            t["agree"] / t["images"],
            t["champion"] / t["images"],
            t["challenger"] / t["images"],
            t["fb"],
            t["fb_champion"],
            t["fb_challenger"],
        )
        for name in order
        for t in [counts[name]]
    ]
    cells = sum(c.images for c in classes)
    return ShadowReport(
        model_name=model_name,
        champion_version=champion_version,
        challenger_version=str(challenger_version),
        images=len(pairs),
        agreement=sum(c.agreement * c.images for c in classes) / cells if cells else None,
        exact_agreement=exact / len(pairs) if pairs else None,
        feedback_images=sum(champion.image_sha256 in corrections for champion, _ in pairs),
        champion_correct=sum(c.champion_correct for c in classes),
        challenger_correct=sum(c.challenger_correct for c in classes),
        classes=classes,
        champion_only_classes=[c for c in champion_only if c not in order],
        challenger_only_classes=[c for c in challenger_only if c not in order],
    )


def report_from_log(
    log: PredictionLog,
    queue: FeedbackQueue,
    model_name: str,
    challenger_version: str,
    champion_version: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> ShadowReport:
    """The report from the prediction log (the newest `limit` shadowed images) and the queue's corrections."""
    pairs = log.shadow_pairs(model_name, challenger_version, champion_version, limit)
    corrections = queue.corrections(champion.image_sha256 for champion, _ in pairs)
    return build_report(pairs, corrections, model_name, challenger_version, champion_version)


def open_log(params: Params, queue: FeedbackQueue) -> PredictionLog:
    """The prediction log the server writes, for reading; UsageError when the log is off (nothing to report)."""
    if params.serve.prediction_log_hours <= 0:
        raise UsageError("the prediction log is off (serve.prediction_log_hours: 0), so no shadow answers are recorded to report on")
    return PredictionLog(queue.database, params.serve.prediction_log_hours * 3600)


def challenger_report(params: Params, queue: FeedbackQueue, limit: int = DEFAULT_LIMIT) -> ShadowReport:
    """The report of the version `challenger` points to now, against the current champion; UsageError without a challenger."""
    name = params.registry.model_name
    challenger = registry.alias_version(name, registry.CHALLENGER)
    if challenger is None:
        raise UsageError(f"{name} has no challenger alias: nothing is shadowed. A failed gate marks one, or run `multitag register`")
    champion = registry.alias_version(name, registry.CHAMPION)
    return report_from_log(open_log(params, queue), queue, name, challenger.version, champion.version if champion else None, limit)


def guard_promotion(params: Params, queue: FeedbackQueue, version: str) -> ShadowReport | None:
    """Before `version` becomes champion: when it is the challenger and the gate has shadow settings,
    raise ShadowGateError with the numbers unless its shadow report satisfies them. Other versions
    (a rollback to an older one, say) have no shadow record and pass. Returns the report it checked."""
    if not policy.requires_shadow(params.gate):
        return None
    challenger = registry.alias_version(params.registry.model_name, registry.CHALLENGER)
    if challenger is None or challenger.version != str(version):
        return None
    if params.serve.prediction_log_hours <= 0:
        raise ShadowGateError(
            f"not promoting challenger version {version}: gate.shadow_* asks for its shadow record, but the prediction log "
            f"is off (serve.prediction_log_hours: 0), so there is none; {OVERRIDE}"
        )
    report = challenger_report(params, queue)
    if reasons := policy.shadow_refusals(report, params.gate):
        raise ShadowGateError(
            f"not promoting challenger version {version}: {'; '.join(reasons)}. See `multitag registry shadow-report`; "
            f"let more traffic (and corrections) accumulate, or {OVERRIDE}"
        )
    return report
