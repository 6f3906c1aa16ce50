"""Load and validate `params.yaml`, the one source of truth for every stage.

Each stage reads only its own group; a typo or a wrong type fails at load time with the key
path in the message, not deep inside a stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PARAMS = Path("params.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticParams(_Strict):
    n_images: int = Field(1500, ge=10)
    image_size: int = Field(96, ge=16)
    seed: int = 0


class DataParams(_Strict):
    source: Literal["voc", "coco", "yolo", "csv", "synthetic"] = "synthetic"
    path: Path = Path("data/raw/synthetic")
    classes: list[str] | None = None
    drop_unlabeled: bool = True
    voc_difficult_counts: bool = True
    synthetic: SyntheticParams = SyntheticParams()


class ValidateParams(_Strict):
    max_invalid_fraction: float = Field(0.05, ge=0, le=1)
    max_pixels: int = Field(80_000_000, gt=0)
    min_labels: int = Field(1, ge=0)
    min_side: int = Field(8, ge=1)


class SplitRatios(_Strict):
    train: float = Field(0.7, gt=0)
    val: float = Field(0.15, gt=0)
    test: float = Field(0.15, ge=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitRatios":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split_ratios must sum to 1, got {total:.3f}")
        return self


class PreprocessParams(_Strict):
    image_size: int = Field(64, ge=16, le=1024)
    resize: Literal["stretch", "letterbox"] = "stretch"
    workers: int = Field(2, ge=1)
    seed: int = 42
    split_ratios: SplitRatios = SplitRatios()


class TrainParams(_Strict):
    architectures: list[str] = ["small_cnn", "mobilenetv2"]
    seed: int = 42
    batch_size: int = Field(32, ge=1)
    head_epochs: int = Field(30, ge=0)
    head_learning_rate: float = Field(3e-3, gt=0)
    fine_tune_epochs: int = Field(8, ge=0)
    fine_tune_learning_rate: float = Field(3e-4, gt=0)
    fine_tune_layers: int = Field(20, ge=0)
    patience: int = Field(4, ge=1)
    dense_units: list[int] = [128]
    dropout: float = Field(0.2, ge=0, lt=1)
    class_weighting: Literal["none", "positive_weights", "asymmetric"] = "positive_weights"
    weights: dict[str, str | None] = {}
    small_cnn_epochs: int = Field(25, ge=1)
    augment: bool = True


class EvaluateParams(_Strict):
    primary_metric: Literal["mAP", "macro_f1", "micro_f1"] = "mAP"
    latency_runs: int = Field(20, ge=1)


class GateParams(_Strict):
    min_mAP: float = Field(0.5, ge=0, le=1)
    min_macro_f1: float = Field(0.4, ge=0, le=1)
    min_improvement: float = 0.005
    max_class_regression: float = Field(0.1, ge=0)
    smoke_latency_ms: float = Field(2000, gt=0)
    register_failed_as_challenger: bool = True


class RegistryParams(_Strict):
    model_name: str = "multitag"


class ServeParams(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    reload_interval_s: float = Field(10, gt=0)
    max_upload_bytes: int = Field(10_000_000, gt=0)
    max_files: int = Field(16, ge=1)
    admin_token_env: str = "MULTITAG_ADMIN_TOKEN"


class FeedbackParams(_Strict):
    db_path: Path = Path("data/feedback/queue.db")
    images_dir: Path = Path("data/feedback/images")
    lease_seconds: float = Field(3600, gt=0)


class RetrainParams(_Strict):
    min_feedback: int = Field(10, ge=1)
    timezone: str = "UTC"
    all_architectures: bool = False


class Params(_Strict):
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


class ParamsError(ValueError):
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
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ParamsError(f"{path} is invalid: {problems}") from None


def _set_dotted(tree: dict, dotted: str, value: object) -> None:
    """Set tree[a][b][c] = value for dotted 'a.b.c', creating groups on the way."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value
