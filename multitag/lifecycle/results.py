"""Where a model is wrong: per-class results on the frozen test split and the photos behind each
error, read from the answers stored with the model (scores.py), never by scoring again.

`multitag evaluate --report` writes them as one static HTML page (reports/results.html): the
per-class table (AP, F1 at the served threshold, the threshold, test positives, false positives
and negatives, what the false positives really showed), each class's false positives and false
negatives as thumbnails ranked by how sure the model was, and, given two versions (the champion
and its challenger), both side by side on the same photos.
"""

from __future__ import annotations

import base64
import functools
import html
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multitag.lifecycle.scores import ScoreTable

MISTAKES_SHOWN = 24  # per class and outcome: the most confident ones
THUMBNAIL_PX = 112


@dataclass(frozen=True)
class Mistake:
    """One wrong answer about one class on one photo."""

    sha256: str
    image_id: str
    path: str
    score: float
    truth: list[str]


@dataclass(frozen=True)
class ClassResult:
    name: str
    ap: float | None
    f1: float | None
    threshold: float
    positives: int
    false_positives: list[Mistake]  # every one, the most confident first
    false_negatives: list[Mistake]  # every one, the most confidently missed first

    def really(self) -> list[tuple[str, int]]:
        """What the false positives showed instead (their true labels, most common first): a cheap
        view of the class co-occurrence of errors."""
        return Counter(label for m in self.false_positives for label in (m.truth or ["(nothing)"])).most_common(3)


@dataclass(frozen=True)
class Results:
    model: str  # e.g. "voc-real v3 (champion)"
    photos: int
    classes: list[ClassResult]

    def by_name(self) -> dict[str, ClassResult]:
        return {c.name: c for c in self.classes}


def results(table: ScoreTable, thresholds: np.ndarray, model: str, split: str = "test", only: set[str] | None = None) -> Results:
    """Per-class results of `table`'s `split` rows (`only` these photo hashes, if given) at the
    model's own (served) thresholds."""
    from multitag.data.manifest import label_matrix
    from multitag.modeling.metrics import compute_metrics

    rows = table.frame[(table.frame["split"] == split) & (table.frame["sha256"].isin(only) if only is not None else True)]
    rows = rows.reset_index(drop=True)
    if rows.empty:
        return Results(model, 0, [])
    y = label_matrix(rows["labels"], table.classes).astype(bool)
    scores = np.stack(rows["scores"].to_numpy())
    per_class = compute_metrics(y, scores, thresholds, table.classes)["per_class"]
    predicted = scores >= np.asarray(thresholds)
    classes = []
    for c, name in enumerate(table.classes):
        wrong_yes, wrong_no = np.flatnonzero(predicted[:, c] & ~y[:, c]), np.flatnonzero(~predicted[:, c] & y[:, c])
        classes.append(
            ClassResult(
                name,
                per_class[name]["ap"],
                per_class[name]["f1"],
                float(per_class[name]["threshold"]),
                int(per_class[name]["support"]),
                _mistakes(rows, scores[:, c], wrong_yes[np.argsort(-scores[wrong_yes, c], kind="stable")]),
                _mistakes(rows, scores[:, c], wrong_no[np.argsort(scores[wrong_no, c], kind="stable")]),
            )
        )
    return Results(model, len(rows), classes)


def _mistakes(rows, scores: np.ndarray, order: np.ndarray) -> list[Mistake]:
    return [
        Mistake(rows.at[i, "sha256"], str(rows.at[i, "image_id"]), str(rows.at[i, "path"]), float(scores[i]), list(rows.at[i, "labels"]))
        for i in order
    ]


def thumbnail(path: str, size: int = THUMBNAIL_PX) -> str | None:
    """A small JPEG of the photo as a data: URI (the page stands alone), or None if it is unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (size * 2, size * 2))
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def html_report(compared: list[Results], title: str) -> str:
    """The page: one per-class table with a column group per model, then per class and outcome the
    photos each model got wrong."""
    first = compared[0]
    head = "".join(f"<th colspan=7>{_e(r.model)} ({r.photos} test photos)</th>" for r in compared)
    sub = "<th>AP</th><th>F1</th><th>threshold</th><th>positives</th><th>FP</th><th>FN</th><th>its FP were really</th>" * len(compared)
    lines = [
        "<!doctype html><meta charset=utf-8>",
        f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style>",
        f"<h1>{_e(title)}</h1>",
        "<p>Per class on the frozen test split, at each model's served thresholds. FP: tagged but not in the photo; "
        "FN: in the photo but not tagged. A class name opens its mistakes, the most confident first.</p>",
        f"<table id=classes><tr><th rowspan=2>class</th>{head}</tr><tr>{sub}</tr>",
    ]
    for row in first.classes:
        cells = "".join(_class_cells(r.by_name().get(row.name)) for r in compared)
        lines.append(f"<tr><td><a href='#class-{_e(row.name)}'>{_e(row.name)}</a></td>{cells}</tr>")
    lines.append("</table>")
    lines.append(OUTCOME_FILTER)
    for row in first.classes:
        lines.append(f"<section id='class-{_e(row.name)}'><h2>{_e(row.name)}</h2>")
        for outcome in ("false_positives", "false_negatives"):
            for result in compared:
                mistakes = getattr(result.by_name().get(row.name), outcome, [])
                lines.append(_mistake_strip(result.model, outcome.replace("_", " "), mistakes))
        lines.append("</section>")
    return "\n".join(lines) + "\n"


def _class_cells(result: ClassResult | None) -> str:
    if result is None:
        return "<td colspan=7>not a class of this model</td>"
    numbers = (_number(result.ap), _number(result.f1), f"{result.threshold:.2f}", result.positives)
    really = ", ".join(f"{_e(label)} ×{count}" for label, count in result.really()) or "–"
    errors = f"<td>{len(result.false_positives)}</td><td>{len(result.false_negatives)}</td>"
    return "".join(f"<td>{n}</td>" for n in numbers) + errors + f"<td class=really>{really}</td>"


def _mistake_strip(model: str, outcome: str, mistakes: list[Mistake]) -> str:
    shown = mistakes[:MISTAKES_SHOWN]
    more = f" (the {len(shown)} most confident shown)" if len(mistakes) > len(shown) else ""
    figures = []
    for m in shown:
        src = thumbnail(m.path)
        picture = f"<img src='{src}' alt='{_e(m.image_id)}'>" if src else "<span class=missing>photo not readable here</span>"
        truth = ", ".join(m.truth) or "(nothing)"
        figures.append(f"<figure title='{_e(m.path)}'>{picture}<figcaption>{m.score:.2f} · {_e(truth)}</figcaption></figure>")
    body = "".join(figures) or "<p>none</p>"
    return f"<div class='strip {outcome.replace(' ', '-')}'><h3>{_e(model)}, {outcome}: {len(mistakes)}{more}</h3>{body}</div>"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def write_report(compared: list[Results], title: str, path: Path) -> Path:
    return write_page(html_report(compared, title), path)


def write_page(page: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


# Show both outcomes or one: hides the other outcome's strips (the page stands alone: inline script).
OUTCOME_FILTER = """<p><label>Show <select id=outcome>
<option value=all>false positives and false negatives</option>
<option value=false-positives>false positives only</option>
<option value=false-negatives>false negatives only</option>
</select></label></p>
<script>
document.getElementById("outcome").addEventListener("change", (event) => {
  for (const strip of document.querySelectorAll(".strip")) {
    strip.hidden = event.target.value !== "all" && !strip.classList.contains(event.target.value);
  }
});
</script>"""

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
td:first-child,td.really{text-align:left}
figure{display:inline-block;margin:3px;width:112px;vertical-align:top}
figure img{width:112px;height:auto}figcaption{font-size:11px}
.false-positives h3{color:#a33}.false-negatives h3{color:#236}
.missing{display:inline-block;width:112px;height:84px;background:#eee;font-size:11px}
"""


def stored_answers(model_uri: str) -> tuple[ScoreTable, np.ndarray] | None:
    """The answers stored with the logged model at `model_uri` and its served thresholds; None when
    it has none (logged before models carried them: `multitag evaluate` it again)."""
    from multitag.lifecycle import scores, tracking

    folder = tracking.download_model(model_uri)
    table = scores.stored(folder)
    if table is None:
        return None
    return table, np.asarray(tracking.logged_metadata(folder)["thresholds"], dtype="float64")


def compared_versions(model_name: str) -> dict[str, str]:
    """{alias: version} of the registry's champion and challenger, those that exist."""
    from multitag.lifecycle import registry

    found = {alias: registry.alias_version(model_name, alias) for alias in (registry.CHAMPION, registry.CHALLENGER)}
    return {alias: version.version for alias, version in found.items() if version is not None}


@functools.lru_cache(maxsize=4)
def report_html(model_name: str, versions: tuple[tuple[str, str], ...]) -> str:
    """The page for these (alias, version) pairs, both models on the test photos both were scored on
    (the split grows with corrections, so an older version's table may lack the newest). Cached by
    the versions: a version's stored answers never change. UsageError when none has stored answers."""
    from multitag.errors import UsageError

    found = {}
    for alias, version in versions:
        answers = stored_answers(f"models:/{model_name}/{version}")
        if answers is not None:
            found[f"{model_name} v{version} ({alias})"] = answers
    if not found:
        raise UsageError(
            f"{model_name} has no champion or challenger with stored test answers: run the pipeline "
            "(or `multitag evaluate` and `multitag register`) with this version of multitag first"
        )
    shared = set.intersection(*(set(table.frame.loc[table.frame["split"] == "test", "sha256"]) for table, _ in found.values()))
    compared = [results(table, thresholds, label, only=shared) for label, (table, thresholds) in found.items()]
    return html_report(compared, f"Where {model_name} is wrong")


def registry_report(model_name: str, path: Path) -> Path:
    """reports/results.html for the registry's champion, with its challenger side by side when there is one."""
    return write_page(report_html(model_name, tuple(compared_versions(model_name).items())), path)
