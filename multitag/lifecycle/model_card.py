"""A model card per registered version: the markdown description the MLflow UI shows beside it.

Nineteen raw tags told a person little; the card says in words what data the version saw, how
it did per class (with how many test photos each number rests on), what the gate decided and on
what evidence, which runtime serves it, and which classes it is weak at.
"""

from __future__ import annotations

from dataclasses import dataclass

from multitag.reports import markdown_table

WEAK_AP = 0.3  # a class below this test AP is called weak
FEW_TEST_PHOTOS = 5  # fewer test positives: the class's numbers are called unreliable


@dataclass(frozen=True)
class CardFacts:
    """Everything the card says, gathered by the register stage."""

    name: str
    version: str
    architecture: str
    run_id: str
    dataset: str
    splits: dict[str, int]  # photos per split
    test_from_corrections: int
    corrections_used: int  # users' corrections this run consumed
    start: str  # cold | warm | quick (train_info.json)
    warm_start_version: str | None
    headline: dict[str, float | None]  # test mAP, macro_f1, micro_f1 at the served thresholds
    per_class: dict[str, dict]  # metrics.compute_metrics' per_class on test
    verdict: str  # passed | failed | not_selected
    reasons: str
    evidence: str
    runtime: str  # how it serves, in words


def weak_classes(per_class: dict[str, dict]) -> list[str]:
    """What it is weak at, in words: the classes under WEAK_AP, the weakest first (with a warning
    where too few test photos back the number); then the classes too few photos can judge, and
    those the test split has no photo of."""
    weak = sorted((r["ap"], name) for name, r in per_class.items() if r["ap"] is not None and r["ap"] < WEAK_AP)
    words = [f"{name} (AP {ap:.2f} on {_photos(per_class[name]['support'])}{_unsure(per_class[name])})" for ap, name in weak]
    named = {name for _, name in weak}
    few = [name for name, r in per_class.items() if 0 < r["support"] < FEW_TEST_PHOTOS and name not in named]
    none = [name for name, r in per_class.items() if r["support"] == 0]
    if few:
        words.append(f"too few test photos (under {FEW_TEST_PHOTOS}) to judge: {', '.join(few)}")
    if none:
        words.append(f"no test photo of: {', '.join(none)}")
    return words


def _photos(count: int) -> str:
    return f"{count} test photo{'' if count == 1 else 's'}"


def _unsure(result: dict) -> str:
    return ", too few to be sure" if result["support"] < FEW_TEST_PHOTOS else ""


def model_card(facts: CardFacts) -> str:
    """The card as markdown."""
    started = {
        "cold": "trained from ImageNet weights",
        "warm": f"fine-tuned from version {facts.warm_start_version}",
        "quick": f"version {facts.warm_start_version} with its cheap member refitted (quick retraining)",
    }.get(facts.start, facts.start)
    splits = ", ".join(f"{count} {split}" for split, count in facts.splits.items())
    headline = ", ".join(f"{k} {v:.4f}" for k, v in facts.headline.items() if v is not None)
    weak = weak_classes(facts.per_class)
    rows = (
        (name, _num(r["ap"]), _num(r["f1"]), f"{r['threshold']:.2f}", r["support"], r["fp"], r["fn"]) for name, r in facts.per_class.items()
    )
    lines = [
        f"# {facts.name} version {facts.version}: {facts.architecture}",
        "",
        f"- **Data**: {facts.dataset}; photos {splits}; {facts.test_from_corrections} test photos are users' corrections; "
        f"{facts.corrections_used} corrections used in this run.",
        f"- **Training**: {started} (MLflow run `{facts.run_id}`).",
        f"- **Test results** at the served thresholds: {headline}.",
        f"- **Gate**: {_verdict(facts)}{f' Evidence: {facts.evidence}.' if facts.evidence else ''}",
        f"- **Serves through**: {facts.runtime}.",
        f"- **Weak at**: {'; '.join(weak) if weak else f'no class under AP {WEAK_AP}'}.",
        "",
        *markdown_table(["class", "AP", "F1", "threshold", "test positives", "false positives", "false negatives"], rows),
    ]
    return "\n".join(lines) + "\n"


def _verdict(facts: CardFacts) -> str:
    if facts.verdict == "passed":
        return "passed: promoted to champion."
    if facts.verdict == "not_selected":
        return f"not judged ({facts.reasons})."
    return f"refused ({facts.reasons})."


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
