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

The rules are pure (`label_issues`, `flooding`, `contradictions`, `verdicts` see only
`Correction`s and settings); `screen_queue` gathers the corrections from the queue and the
prediction log and holds what they flag. An item an admin released (queue.RELEASED) is not
screened again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import statistics
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multitag.config import RetrainParams
from multitag.feedback.fingerprints import FingerprintStore, near_pairs
from multitag.feedback.predictions import CHAMPION, PredictionLog
from multitag.feedback.queue import FeedbackItem, FeedbackQueue, Truth
from multitag.feedback.schema import RELEASED
from multitag.feedback.store import decoded_batches

log = logging.getLogger(__name__)
CLIENT_SALT_ENV = "MULTITAG_CLIENT_SALT"  # the key of client_hash; every replica must share it
_DEFAULT_SALT = "multitag-feedback-client"
ALL_ITEMS = 10**9
Scorer = Callable[[Mapping[str, Path]], dict[str, Mapping[str, float]]]  # {sha: stored image} -> {sha: the champion's scores}
SCORE_BATCH = 32  # images per model call when the champion scores stored images


@dataclass(frozen=True)
class Correction:
    """What the rules see of one feedback item: its labels, its sender and, where known, the
    out-of-sample scores (in `classes` order) and the image's difference hash."""

    id: int
    image_sha256: str
    labels: frozenset[str]
    client: str | None = None
    scores: np.ndarray | None = None
    fingerprint: int | None = None
    absent: frozenset[str] | None = None  # partial labels: only these are confirmed absent (None: every other class)

    def knows(self, name: str) -> bool:
        """Whether this correction says anything about `name` (a partial one's blank boxes say nothing)."""
        return Truth(self.labels, self.absent).knows(name)

    def answered(self, classes: Sequence[str]) -> frozenset[str]:
        """The labels with each unknown class filled in by the model's own answer (score >= 0.5):
        what the label-error rules compare with the scores, so a blank box is never a disagreement."""
        if self.absent is None or self.scores is None:
            return self.labels
        return self.labels | {name for name, score in zip(classes, self.scores) if name not in self.absent and score >= 0.5}


def client_hash(address: str | None) -> str | None:
    """A keyed hash of the sender's address, so the flood rule can count per client without the
    queue storing addresses. Set MULTITAG_CLIENT_SALT (the same secret on every replica) to make it
    irreversible for whoever reads the database; unset, a fixed key only hides addresses from sight."""
    if not address:
        return None
    key = os.environ.get(CLIENT_SALT_ENV, _DEFAULT_SALT).encode()
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()[:32]


def strongest_disagreement(item: Correction, classes: Sequence[str]) -> tuple[str, bool, float]:
    """The class on which the labels and the scores disagree most: (class, labelled?, score)."""
    assert item.scores is not None
    answered = item.answered(classes)
    given = np.array([name in answered for name in classes])
    disagreement = np.where(given, 1 - item.scores, item.scores)
    k = int(np.argmax(disagreement))
    return classes[k], bool(given[k]), float(item.scores[k])


def describe(name: str, given: bool, score: float) -> str:
    return f"'{name}' {'given' if given else 'missing'} but the model scored it {score:.2f}"


def label_issues(items: Sequence[Correction], classes: Sequence[str], settings: RetrainParams) -> dict[int, str]:
    """Likely label errors among the items with out-of-sample scores: {id: reason}.

    With at least `screen_min_batch` of them, cleanlab's multi-label confident learning (per class
    thresholds estimated from the batch, issues pruned by the estimated noise rate); with fewer, the
    fixed confident-disagreement rule, because thresholds estimated from a handful are noise.
    """
    scored = [item for item in items if item.scores is not None]
    if not scored:
        return {}
    if len(scored) >= settings.screen_min_batch:
        flagged = _cleanlab_issues(scored, classes, settings.screen_noise_fraction)
        method = "label issue (confident learning)"
    else:
        flagged = [item for item in scored if _confidently_against(item, classes, settings)]
        method = "label issue (confident model disagrees)"
    return {item.id: f"{method}: {describe(*strongest_disagreement(item, classes))}" for item in flagged}


def _confidently_against(item: Correction, classes: Sequence[str], settings: RetrainParams) -> bool:
    _, given, score = strongest_disagreement(item, classes)
    sure = settings.screen_small_batch_confidence
    return score <= 1 - sure if given else score >= sure


def _cleanlab_issues(scored: Sequence[Correction], classes: Sequence[str], noise_fraction: float) -> list[Correction]:
    """cleanlab's issues, the likeliest `noise_fraction` of the number it estimates: its estimate counts
    the champion's own blind spots too (a photo's chair it has never learnt to see), and every clean
    item held is a correction that does not train tonight (measured: bench/feedback_screen.py)."""
    from cleanlab.multilabel_classification.filter import find_label_issues

    index = {name: k for k, name in enumerate(classes)}
    labels = [sorted(index[name] for name in item.answered(classes) if name in index) for item in scored]
    with warnings.catch_warnings():  # "too few examples" of a class in the batch: expected, and not actionable here
        warnings.simplefilter("ignore")
        mask = find_label_issues(labels=labels, pred_probs=np.stack([item.scores for item in scored]), frac_noise=noise_fraction, n_jobs=1)
    return [item for item, flagged in zip(scored, mask) if flagged]


def flooding(items: Sequence[Correction], settings: RetrainParams) -> dict[int, str]:
    """Every item of a client that sent more than flood_max_items of the users' items, more than
    flood_max_share of them and more than flood_over_median times the median of the other clients:
    {id: reason}. All three must be passed, so one keen user of a quiet deployment is not a flood,
    nor a busy client among many, nor a handful of equally busy clients (a team correcting
    together). A flood is a client standing out from a crowd, so with fewer than
    flood_min_other_clients other clients there is nothing to stand out from: a photographer
    correcting their own library, or a small team, is never held for volume alone (the label rules
    still judge each of their corrections). The operator's items (no client: CLI, import, admin
    upload) neither count nor dilute the share."""
    counts = Counter(item.client for item in items if item.client)
    total = sum(counts.values())
    if len(counts) - 1 < settings.flood_min_other_clients:
        return {}

    def floods(client: str, n: int) -> bool:
        typical = statistics.median(m for other, m in counts.items() if other != client)
        return n > settings.flood_max_items and n > settings.flood_max_share * total and n > settings.flood_over_median * typical

    flooders = {client: n for client, n in counts.items() if floods(client, n)}
    return {
        item.id: (
            f"flood: client {item.client[:8]} sent {flooders[item.client]} of the {total} pending corrections from users "
            f"(retrain.flood_max_items {settings.flood_max_items}, flood_max_share {settings.flood_max_share}, "
            f"flood_over_median {settings.flood_over_median})"
        )
        for item in items
        if item.client in flooders
    }


def contradictions(
    items: Sequence[Correction], others: Sequence[Correction], classes: Sequence[str], settings: RetrainParams
) -> dict[int, str]:
    """Items with a label the model is confident against and every other client's correction of
    the same or a near-identical image disagrees with too: {id: reason}."""
    reasons: dict[int, str] = {}
    pool = {other.id: other for other in [*others, *items]}
    neighbours = near_pairs({c.id: c.fingerprint for c in pool.values()}, settings.near_duplicate_bits)  # banded: not every pair
    same_image: dict[str, set[int]] = defaultdict(set)
    for other in pool.values():
        same_image[other.image_sha256].add(other.id)
    for item in items:
        if item.scores is None:
            continue
        near = (neighbours.get(item.id, set()) | same_image[item.image_sha256]) - {item.id}
        peers = [pool[i] for i in sorted(near) if not (item.client and pool[i].client == item.client)]
        if not peers:
            continue
        for name, score in zip(classes, item.scores):
            if not item.knows(name):  # the sender left this box blank: nothing to contradict
                continue
            given = name in item.labels
            model_against = score <= 1 - settings.screen_confidence if given else score >= settings.screen_confidence
            judges = [peer for peer in peers if peer.knows(name)]  # a peer's blank box neither agrees nor disagrees
            if model_against and judges and all((name in peer.labels) != given for peer in judges):
                reasons[item.id] = (
                    f"contradiction: {describe(name, given, float(score))}, and all {len(judges)} other correction(s) "
                    "of this or a near-identical image say the opposite"
                )
                break
    return reasons


def relabels(
    items: Sequence[Correction],
    trained: Mapping[str, Correction],
    others: Sequence[Correction],
    classes: Sequence[str],
    in_sample: Mapping[str, np.ndarray],
) -> dict[int, str]:
    """Items that change labels another client's consumed correction trained the model on, with
    neither the model (its score on the image, in-sample: it learned the old labels) nor a third
    client's correction of the image agreeing with the change: {id: reason}. The newest correction
    wins in every later export, so without this rule one hostile client could overwrite anyone's
    good labels. A client correcting its own earlier correction, and the operator, are not held."""
    reasons: dict[int, str] = {}
    for item in items:
        before = trained.get(item.image_sha256)
        if before is None or item.client is None or before.client == item.client:
            continue
        changed = [n for n in classes if item.knows(n) and before.knows(n) and (n in item.labels) != (n in before.labels)]
        scores = in_sample.get(item.image_sha256)
        model_agrees = scores is not None and all((score >= 0.5) == (n in item.labels) for n, score in zip(classes, scores) if n in changed)
        backed = any(
            other.image_sha256 == item.image_sha256
            and other.client not in (None, item.client, before.client)
            and all(other.knows(n) and (n in other.labels) == (n in item.labels) for n in changed)
            for other in others
        )
        if changed and not model_agrees and not backed:
            said = ", ".join(f"'{n}' {'added' if n in item.labels else 'removed'}" for n in changed)
            reasons[item.id] = f"relabels a photo already trained on ({said}); neither the model nor another client agrees"
    return reasons


def verdicts(
    items: Sequence[Correction],
    others: Sequence[Correction],
    classes: Sequence[str],
    settings: RetrainParams,
    relabelled: Mapping[int, str] | None = None,
) -> dict[int, str]:
    """Every rule's reasons per flagged item, joined: {id: reason}. Items no rule flags are absent.
    `relabelled` is the `relabels` rule's answer (it needs what trained, which only the queue knows)."""
    found: dict[int, list[str]] = {}
    rules = (flooding(items, settings), contradictions(items, others, classes, settings), label_issues(items, classes, settings))
    for rule in (*rules, relabelled or {}):
        for item_id, reason in rule.items():
            found.setdefault(item_id, []).append(reason)
    return {item_id: "; ".join(reasons) for item_id, reasons in sorted(found.items())}


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


def summary(reasons: Mapping[int, str]) -> str:
    """How many held items each rule flagged, e.g. "flood 12, label issue 3" (an item may count under several)."""
    rules = Counter(part.split(":")[0].split(" (")[0] for reason in reasons.values() for part in reason.split("; "))
    return ", ".join(f"{rule} {count}" for rule, count in rules.most_common())
