"""Screen corrections before they train (issue 13): hold the suspicious ones for a person instead.

A correction is a user's word against the model's, and most are right: that is why they are
worth training on. A few are not, and a model fitted on them learns the mistake: a label slipped
or missed by accident, or labels sent on purpose to poison the next champion. Right before each
nightly claim, every pending item is scored by four rules; an item any rule flags moves to
`held` with the rule's reason, waits for an admin (`multitag feedback list --state held`, then
`requeue --state held` to release or `reject`), and never trains meanwhile.

- Label issues: confident learning (cleanlab's multi-label `find_label_issues`) on out-of-sample
  scores, i.e. scores of a model that never trained on the image: the champion's answer that the
  prediction log kept for it, else the champion scoring the stored image now. Images already
  trained on (an earlier correction was consumed) have no out-of-sample score and skip this rule.
  Only the likeliest `screen_noise_fraction` of the issues cleanlab estimates are held: the
  estimate counts the champion's blind spots too (good corrections of classes it misses).
  Confident learning estimates each class's thresholds from the batch itself, so below
  `retrain.screen_min_batch` scored items those estimates are noise and a fixed rule takes over:
  a label the model scores at most 1 - `screen_small_batch_confidence`, or a missing one it scores
  at least that (0.99: the model is all but certain and the correction says the opposite; at 0.9
  the rule held so many good corrections on voc-real that the model lost more than unscreened).
- Flooding: one client (a keyed hash of the sender's address, `client_hash`) sending more than
  `flood_max_items` of the users' pending corrections and more than `flood_max_share` of them; the
  operator's own items (CLI, import, admin upload: no client) are never counted. A flood stands out
  from a crowd: with fewer than `flood_min_other_clients` other clients (a photographer alone, a
  small team) volume alone holds nothing, and the label rules are what screen their corrections.
  Numbers on voc-real with 20% corrupted corrections: bench/README.md.
- Relabelling: a correction that changes labels another client's consumed correction trained the
  model on (the newest correction wins in every export) is held unless the model (in-sample) or
  a third client agrees with the change; a client correcting its own earlier correction is not.
- Contradiction: a label the model is confident against AND every other correction of the same
  or a near-identical image (a 64-bit difference hash within `near_duplicate_bits`) from another
  client disagrees with, too. Either alone is ordinary: users correct confident mistakes, and
  users disagree; both together is what a wrong or malicious label looks like.

The rules are pure and live in screen_rules.py (`label_issues`, `flooding`, `contradictions`,
`relabels`, `verdicts` see only `Correction`s and settings); `screen_queue` here gathers the corrections from the queue and the
prediction log and holds what they flag. An item an admin released (queue.RELEASED) is not
screened again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from multitag.config import RetrainParams
from multitag.feedback.fingerprints import FingerprintStore
from multitag.feedback.predictions import CHAMPION, PredictionLog
from multitag.feedback.queue import FeedbackItem, FeedbackQueue
from multitag.feedback.schema import RELEASED
from multitag.feedback.screen_rules import (  # the rules, for the callers that screen by hand
    Correction,
    Scorer,
    client_hash,
    contradictions,
    flooding,
    label_issues,
    relabels,
    summary,
    verdicts,
)
from multitag.feedback.store import decoded_batches

__all__ = ["Correction", "client_hash", "contradictions", "flooding", "label_issues", "relabels", "screen_queue", "summary", "verdicts"]

log = logging.getLogger(__name__)
SCORE_BATCH = 32  # images per model call when the champion scores stored images
ALL_ITEMS = 10**9


# -- gathering from the queue and the prediction log ---------------------------------------------


def out_of_sample_scores(
    items: Iterable[FeedbackItem],
    trained: set[str],
    log: PredictionLog | None,
    model_name: str,
    classes: Sequence[str],
    score_images: Scorer | None,
    image_path: Callable[[str], Path],
) -> dict[str, np.ndarray]:
    """Scores, in `classes` order, of the items' images that no model has trained on (not in `trained`):
    the champion's answer logged for the image, else `score_images` on the stored image; images with
    neither (or a scorer whose classes differ) are left out."""
    wanted = sorted({item.image_sha256 for item in items} - trained)
    logged = log.latest_by_image(model_name, wanted, role=CHAMPION) if log is not None else {}
    found = {sha: answer.scores for sha, answer in logged.items()}
    stored = {sha: path for sha in wanted if sha not in found and (path := _stored(image_path, sha)) is not None}
    if stored and score_images is not None:
        found.update(score_images(stored))
    return {sha: np.array([scores[name] for name in classes]) for sha, scores in found.items() if all(name in scores for name in classes)}


def screen_queue(
    queue: FeedbackQueue,
    classes: Sequence[str],
    settings: RetrainParams,
    log: PredictionLog | None = None,
    model_name: str = "",
    score_images: Scorer | None = None,
) -> dict[int, str]:
    """Hold the pending items the rules flag, with their reasons; returns {id: reason} of those held.

    `log` and `model_name` find the champion's logged answers; `score_images` (the champion scoring
    stored images) covers images without one. Items released by an admin are not screened again.
    """
    everything = queue.list_items(None, ALL_ITEMS)
    pending = [item for item in everything if item.state == "pending" and item.reason != RELEASED]
    if not pending:
        return {}
    screened = {item.id for item in pending}
    others = [item for item in everything if item.state in ("pending", "claimed", "consumed") and item.id not in screened]
    trained = {item.image_sha256 for item in everything if item.state == "consumed"}
    scores = out_of_sample_scores(pending, trained, log, model_name, classes, score_images, queue.images.path)
    fingerprints = FingerprintStore(queue.database).of((item.image_sha256 for item in [*pending, *others]), queue.images.path)

    def correction(item: FeedbackItem, with_scores: bool) -> Correction:
        item_scores = scores.get(item.image_sha256) if with_scores else None
        absent = None if item.absent is None else frozenset(item.absent)
        return Correction(
            item.id, item.image_sha256, frozenset(item.labels), item.client, item_scores, fingerprints[item.image_sha256], absent
        )

    items, peers = [correction(item, True) for item in pending], [correction(item, False) for item in others]
    consumed = sorted((item for item in everything if item.state == "consumed"), key=lambda item: item.id)
    trained_as = {item.image_sha256: correction(item, False) for item in consumed}  # the newest consumed correction wins
    relabelling = [item for item in pending if item.image_sha256 in trained_as]
    in_sample = out_of_sample_scores(relabelling, set(), log, model_name, classes, score_images, queue.images.path) if relabelling else {}
    reasons = verdicts(items, peers, classes, settings, relabels(items, trained_as, peers, classes, in_sample))
    queue.hold(reasons)
    return reasons


def _stored(image_path: Callable[[str], Path], sha: str) -> Path | None:
    try:
        return image_path(sha)
    except KeyError:  # the image is gone: validation rejects the item later
        return None


def champion_scorer(model_name: str) -> Scorer:
    """The champion scoring stored images, loaded on first use (most items have a logged answer)."""
    from multitag.lifecycle import registry
    from multitag.lifecycle.predictor import Predictor

    loaded: list[Predictor | None] = []  # loaded once: None when there is no usable champion

    def score(paths: Mapping[str, Path]) -> dict[str, Mapping[str, float]]:
        if not loaded:
            champion = registry.alias_version(model_name, registry.CHAMPION)
            try:
                loaded.append(Predictor.from_uri(f"models:/{model_name}/{champion.version}") if champion else None)
            except Exception:  # the run's own use of the champion reports that properly; its items go unscored here
                log.exception("could not load the champion of %s to score %d stored feedback images", model_name, len(paths))
                loaded.append(None)
        if loaded[0] is None:
            return {}
        predictor, found = loaded[0], {}
        for hashes, images in decoded_batches(paths, predictor.decode, SCORE_BATCH):  # an unusable one: validation rejects it later
            rows = predictor.predict_arrays(images)
            found.update((sha, dict(zip(predictor.classes, map(float, row)))) for sha, row in zip(hashes, rows))
        return found

    return score
