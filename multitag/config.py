"""Load and validate `params.yaml`, the one source of truth for every stage.

Each stage reads only its own group; a typo or a wrong type fails at load time with the key
path in the message, not deep inside a stage (every group forbids keys it does not know).
The groups of what runs after the pipeline, `serve` and `retrain`, are defined in
service_config.py (no stage reads them) and importable from here too.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from multitag.errors import MultitagError
from multitag.layout import Layout
from multitag.service_config import RetrainParams, ServeParams

DEFAULT_PARAMS = Path("params.yaml")


class SyntheticParams(BaseModel, extra="forbid"):
    n_images: int = Field(1500, ge=10)
    image_size: int = Field(96, ge=16)
    seed: int = 0


ResizeMode = Literal["stretch", "letterbox"]
Source = Literal["voc", "coco", "yolo", "csv", "synthetic"]


class DataParams(BaseModel, extra="forbid"):
    source: Source = "synthetic"
    path: Path = Layout().synthetic
    classes: list[str] | None = None
    drop_unlabeled: bool = True
    voc_difficult_counts: bool = True
    synthetic: SyntheticParams = SyntheticParams()


class ValidateParams(BaseModel, extra="forbid"):
    max_invalid_fraction: float = Field(0.05, ge=0, le=1)
    max_pixels: int = Field(80_000_000, gt=0)
    min_labels: int = Field(1, ge=0)
    min_side: int = Field(8, ge=1)


class SplitRatios(BaseModel, extra="forbid"):
    train: float = Field(0.7, gt=0)
    val: float = Field(0.15, gt=0)
    test: float = Field(0.15, ge=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitRatios:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split_ratios must sum to 1, got {total:.3f}")
        return self


class PreprocessParams(BaseModel, extra="forbid"):
    image_size: int | Literal["auto"] = "auto"
    resize: ResizeMode = "stretch"
    workers: int = Field(2, ge=1)
    seed: int = 42
    split_ratios: SplitRatios = SplitRatios()
    keep_source_splits: bool = False
    # A stable share (by content hash) of the fully labelled corrections joins the frozen test split instead of training;
    # below 1, since corrections that never train would make the nightly retraining pointless.
    feedback_test_share: float = Field(0.2, ge=0, lt=1)

    @model_validator(mode="after")
    def _size_in_range(self) -> PreprocessParams:
        if self.image_size != "auto" and not 16 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be between 16 and 1024 (or auto), got {self.image_size}")
        return self


class TrainParams(BaseModel, extra="forbid"):
    """`auto` values take the recipe of the data's kind (multitag/recipes.py): photos or shapes."""

    architectures: list[str] = ["small_cnn", "mobilenetv2"]  # concrete: dvc.yaml's foreach reads it
    seed: int = 42
    batch_size: int = Field(32, ge=1)
    head_epochs: int = Field(30, ge=0)
    head_learning_rate: float = Field(3e-3, gt=0)
    fine_tune_epochs: int | Literal["auto"] = "auto"
    fine_tune_learning_rate: float | Literal["auto"] = "auto"
    fine_tune_layers: int | Literal["auto"] = "auto"
    patience: int = Field(4, ge=1)
    dense_units: list[int] | Literal["auto"] = "auto"
    dropout: float = Field(0.2, ge=0, lt=1)
    class_weighting: Literal["auto", "none", "positive_weights", "asymmetric"] = "auto"
    weights: dict[str, str | None] = {"mobilenetv2": "imagenet", "efficientnetb0": "imagenet", "resnet50": "imagenet", "small_cnn": None}
    small_cnn_epochs: int = Field(30, ge=1)
    augment: bool = True
    flip_average: bool | Literal["auto"] = "auto"
    probe_ensemble: bool | Literal["auto"] = "auto"
    probe_input_size: int | Literal["auto"] = "auto"
    network_weight: float | Literal["auto"] = "auto"


class EvaluateParams(BaseModel, extra="forbid"):
    primary_metric: Literal["mAP", "macro_f1", "micro_f1"] = "mAP"
    latency_runs: int = Field(20, ge=1)
    min_threshold_positives: int = Field(8, ge=1)
    default_threshold: float = Field(0.5, gt=0, lt=1)
    threshold_bounds: tuple[float, float] = (0.1, 0.9)

    @model_validator(mode="after")
    def _bounds_hold_the_default(self) -> EvaluateParams:
        low, high = self.threshold_bounds
        if not 0 <= low <= self.default_threshold <= high <= 1:
            raise ValueError(
                f"threshold_bounds {self.threshold_bounds} must satisfy 0 <= low <= default_threshold ({self.default_threshold}) <= high <= 1"
            )
        return self


class GateParams(BaseModel, extra="forbid"):
    min_mAP: float | None = Field(None, ge=0, le=1)
    min_macro_f1: float | None = Field(None, ge=0, le=1)
    baselines: list[Literal["class_prior", "probe"]] = ["class_prior", "probe"]
    # A gain of a metric in [0, 1] lies in [-1, 1]: 0 = at least the champion's score (docs/DECISIONS.md, "The gate's
    # margin"); below 0 is a non-inferiority margin, -1 never refuses on the gain.
    min_improvement: float = Field(0.0, ge=-1, le=1)
    require_confident_gain: bool = False  # promote only when the gain's bootstrap interval's lower bound clears min_improvement
    max_class_regression: float = Field(0.1, ge=0)
    # A class with fewer test positives cannot refuse on its AP drop (reported instead): with 2-3 positives one
    # photo moving a few ranks moves AP by more than max_class_regression (docs/DECISIONS.md, "The gate's margin").
    min_class_positives: int = Field(8, ge=0)
    allow_dropping_classes: bool = False  # a candidate that tags fewer of the champion's classes may replace it
    smoke_latency_ms: float = Field(2000, gt=0)
    register_failed_as_challenger: bool = True
    shadow_min_agreement: float | None = Field(None, ge=0, le=1)  # promoting the challenger needs this shadow agreement; null: no check
    shadow_require_feedback_win: bool = False  # promoting the challenger needs more right answers than the champion on corrected images


class RegistryParams(BaseModel, extra="forbid"):
    model_name: str = "auto"  # auto: one registered model per task (task_model_name)


DEMO_MODEL_NAME = "multitag"


def task_model_name(data: DataParams) -> str:
    """The registered model of this task: the demo's is `multitag`, your dataset's is named after
    its folder (plus its class subset), so a model for one class list never serves, or blocks,
    another's (`voc-real`, `voc-real-cat-dog`, `voc-real-7f3a9c01` for a long subset)."""
    if data.source == "synthetic":
        return DEMO_MODEL_NAME
    name = re.sub(r"[^a-z0-9]+", "-", Path(os.path.abspath(data.path)).name.lower()).strip("-") or data.source
    if data.classes:
        subset = "-".join(re.sub(r"[^a-z0-9]+", "", c.lower()) for c in data.classes)
        name += f"-{subset}" if len(subset) <= 40 else f"-{hashlib.sha1('|'.join(sorted(data.classes)).encode()).hexdigest()[:8]}"
    return name


QUEUE_URL_ENV = "MULTITAG_FEEDBACK_DB_URL"  # overrides feedback.db_url: each host says where the shared queue is
QUEUE_IMAGES_ENV = "MULTITAG_FEEDBACK_IMAGES_DIR"  # overrides feedback.images_dir: e.g. a volume every replica mounts


class FeedbackParams(BaseModel, extra="forbid"):
    db_url: str | None = None
    db_path: Path = Layout().feedback / "queue.db"
    images_dir: Path = Layout().feedback / "images"
    lease_seconds: float = Field(3600, gt=0)
    # Retention (FeedbackQueue.expire; 0 keeps them): a held item nobody released turns rejected
    # after held_days; rejected items and replaced consumed ones are deleted after retention_days.
    held_days: float = Field(30, ge=0)
    retention_days: float = Field(30, ge=0)

    def expiry_cutoffs(self, now: float) -> tuple[float | None, float | None]:
        """(held_before, decided_before) for FeedbackQueue.expire at time `now`; None: kept."""

        def before(days: float) -> float | None:
            return now - days * 86400 if days > 0 else None

        return before(self.held_days), before(self.retention_days)

    def database(self, root: Path = Path(".")) -> str | Path:
        """Where the queue's items live: $MULTITAG_FEEDBACK_DB_URL, else `db_url` (a SQLAlchemy URL,
        e.g. postgresql+psycopg://...), else the embedded SQLite file `db_path` under `root`."""
        return os.environ.get(QUEUE_URL_ENV) or self.db_url or root / self.db_path

    def images(self, root: Path = Path(".")) -> Path:
        """Where the queue's images live: $MULTITAG_FEEDBACK_IMAGES_DIR, else `images_dir` under `root` (an absolute path stays as it is)."""
        return root / Path(os.environ.get(QUEUE_IMAGES_ENV) or self.images_dir)


class Params(BaseModel):
    data: DataParams = DataParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    preprocess: PreprocessParams = PreprocessParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()
    registry: RegistryParams = RegistryParams()
    serve: ServeParams = ServeParams()
    feedback: FeedbackParams = FeedbackParams()
    retrain: RetrainParams = RetrainParams()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _resolve_auto(self) -> Params:
        """Replace every `auto` with the recipe of this data's kind, so stages only see values."""
        from multitag.recipes import resolve

        resolve(self)
        if self.registry.model_name == "auto":
            self.registry.model_name = task_model_name(self.data)
        return self


class ParamsError(MultitagError, ValueError):
    """params.yaml is missing or invalid; the message names the file and each bad key."""


def load_params(path: Path | str = DEFAULT_PARAMS, overrides: dict | None = None) -> Params:
    """Read `path`, apply dotted-key `overrides` (e.g. {"preprocess.image_size": 32}), validate."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found: run from the project root or pass --params PATH")
    raw = yaml.safe_load(path.read_text()) or {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ParamsError(f"{path} is invalid: {problems}") from None


def _set_dotted(tree: dict, dotted: str, value: object) -> None:
    """Set tree[a][b][c] = value for dotted 'a.b.c', creating groups on the way."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value
