"""The screen's rules (screen.py tells the story): pure functions of `Correction`s and settings that
say which pending corrections to hold and why: label issues (confident learning, or a fixed rule
on small batches), a flooding client, relabelling another client's trained correction, and
contradictions. No queue, no model, no file here, so each rule is tested on its own."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import statistics
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multitag.config import RetrainParams
from multitag.feedback.fingerprints import near_pairs
from multitag.feedback.queue import Truth

log = logging.getLogger(__name__)
CLIENT_SALT_ENV = "MULTITAG_CLIENT_SALT"  # the key of client_hash; every replica must share it
_DEFAULT_SALT = "multitag-feedback-client"
Scorer = Callable[[Mapping[str, Path]], dict[str, Mapping[str, float]]]  # {sha: stored image} -> {sha: the champion's scores}


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


def summary(reasons: Mapping[int, str]) -> str:
    """How many held items each rule flagged, e.g. "flood 12, label issue 3" (an item may count under several)."""
    rules = Counter(part.split(":")[0].split(" (")[0] for reason in reasons.values() for part in reason.split("; "))
    return ", ".join(f"{rule} {count}" for rule, count in rules.most_common())
