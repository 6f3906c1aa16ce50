"""The model card (lifecycle/model_card.py): what a person reads about a version in the MLflow UI."""

from __future__ import annotations

from multitag.lifecycle.model_card import CardFacts, model_card, weak_classes


def per_class(ap: float | None, support: int) -> dict:
    return {"ap": ap, "f1": 0.5, "threshold": 0.4, "support": support, "fp": 3, "fn": 2}


RESULTS = {"bird": per_class(0.01, 9), "person": per_class(0.91, 120), "bicycle": per_class(0.02, 12), "sofa": per_class(None, 0)}


def test_weak_classes_are_named_in_words_weakest_first_with_their_photo_counts():
    assert weak_classes(RESULTS) == [
        "bird (AP 0.01 on 9 test photos)",
        "bicycle (AP 0.02 on 12 test photos)",
        "no test photo of: sofa",
    ]
    few = {"bird": per_class(0.2, 1), "train": per_class(0.9, 3)}
    assert weak_classes(few) == ["bird (AP 0.20 on 1 test photo, too few to be sure)", "too few test photos (under 5) to judge: train"]


def test_the_card_says_data_training_results_gate_runtime_and_weaknesses():
    facts = CardFacts(
        name="voc-real",
        version="3",
        architecture="mobilenetv2",
        run_id="abc",
        dataset="voc:/data/voc",
        splits={"train": 900, "val": 150, "test": 207},
        test_from_corrections=51,
        corrections_used=283,
        start="quick",
        warm_start_version="2",
        headline={"mAP": 0.5229, "macro_f1": 0.41, "micro_f1": None},
        per_class=RESULTS,
        verdict="failed",
        reasons="mAP gain -0.0025 < required +0.0050",
        evidence="mAP gain -0.0025, 95% interval [-0.041, +0.029]",
        runtime="Keras",
    )
    card = model_card(facts)
    assert card.startswith("# voc-real version 3: mobilenetv2\n")
    assert "photos 900 train, 150 val, 207 test; 51 test photos are users' corrections; 283 corrections used" in card
    assert "version 2 with its cheap member refitted (quick retraining)" in card and "mAP 0.5229, macro_f1 0.4100." in card
    assert "- **Gate**: refused (mAP gain -0.0025 < required +0.0050). Evidence: mAP gain -0.0025, 95% interval" in card
    assert "- **Weak at**: bird (AP 0.01 on 9 test photos); bicycle" in card and "- **Serves through**: Keras." in card
    assert "| bird | 0.010 | 0.500 | 0.40 | 9 | 3 | 2 |" in card and "| sofa | n/a |" in card
