"""The settings of what runs after the pipeline: the API server (`serve` in params.yaml) and the
nightly retraining with its screen (`retrain`). config.py's `Params` holds them as its `serve` and
`retrain` groups, and they are importable from there as before.

They live apart from config.py because no stage of dvc.yaml reads them: the stages list config.py
among their code deps, not this module, so tuning a server limit or the screen re-runs no stage
and invalidates no Prefect cache key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

Runtime = Literal["auto", "keras"]  # auto: a version's parity-checked TFLite export when it has one


class ServeParams(BaseModel, extra="forbid"):
    runtime: Runtime = "auto"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    reload_interval_s: float = Field(10, gt=0)
    max_upload_bytes: int = Field(10_000_000, gt=0)
    max_files: int = Field(16, ge=1)
    # What requests may cost together (serving/limits.py): uploads and their megabytes in flight
    # (more: 503 busy), images decoded at once, and the decoded size of one image (a 16-bit or huge
    # PNG is refused).
    max_requests_in_flight: int = Field(32, ge=1)
    max_upload_mb_in_flight: float = Field(256, gt=0)
    decode_slots: int = Field(2, ge=1)
    max_decode_mb: float = Field(64, gt=0)
    # What one network client may cost (serving/quotas.py; 0: no limit; loopback clients are exempt
    # while trust_loopback is on): requests with a body per minute and their megabytes per hour
    # (more: 429 with Retry-After), and the images its open corrections keep on disk (more: 507).
    client_requests_per_minute: int = Field(120, ge=0)
    client_upload_mb_per_hour: float = Field(1000, ge=0)
    client_storage_mb: float = Field(1000, ge=0)
    # Proxies whose X-Forwarded-For names the client (uvicorn's forwarded_allow_ips): list a load
    # balancer on another host, or every client shares its address, and its budget.
    trusted_proxies: list[str] = ["127.0.0.1"]
    admin_token_env: str = "MULTITAG_ADMIN_TOKEN"
    # Who may see other users' photos and answers (serving/access.py): the reviewer or admin token;
    # with neither set, only clients on this machine (loopback). False behind a local reverse proxy.
    reviewer_token_env: str = "MULTITAG_REVIEWER_TOKEN"
    trust_loopback: bool = True
    allowed_hosts: list[str] = []  # host names answered besides IP addresses and localhost ("*": any; ".example.org": its subdomains)
    allowed_origins: list[str] = []
    prediction_retention_hours: float = Field(24, ge=0)
    prediction_sweep_interval_s: float = Field(600, gt=0)
    prediction_log_hours: float = Field(720, ge=0)
    batch_max_size: int = Field(16, ge=1)  # micro-batching (multitag/serving/batching.py); 1 turns it off
    batch_max_wait_ms: float = Field(5, ge=0)
    shadow: bool = True  # score each /predict image with the challenger too, off the response path (serving/shadow.py)
    shadow_queue_size: int = Field(8, ge=1)  # requests waiting for shadow scoring; more are dropped (counted), never waited for
    warm_features: bool = True  # compute pending corrections' features for the quick path while users correct (serving/feature_warmer.py)
    drift_window: int = Field(500, ge=1)  # drift (GET /drift): the served version's last N logged answers
    drift_min_predictions: int = Field(50, ge=1)  # fewer logged answers: "not enough data", no verdict
    drift_alpha: float = Field(0.01, gt=0, lt=1)  # family-wise false-alarm rate across classes (Holm)

    @model_validator(mode="after")
    def _drift_window_holds_the_minimum(self) -> ServeParams:
        if self.drift_min_predictions > self.drift_window:
            raise ValueError(
                f"drift_min_predictions ({self.drift_min_predictions}) must not exceed drift_window ({self.drift_window}): no verdict could ever be reached"
            )
        return self


class RetrainParams(BaseModel, extra="forbid"):
    min_feedback: int = Field(10, ge=1)
    timezone: str = "UTC"
    all_architectures: bool = False
    on_drift: bool = False  # the server's sweep starts the retraining early when its predictions drift
    drift_cooldown_hours: float = Field(24, gt=0)  # at most one such early start per this many hours
    # The screen before each claim (multitag/feedback/screen.py): suspicious pending items are held for review.
    screen: bool = True
    screen_confidence: float = Field(0.9, gt=0.5, lt=1)  # the model is "confident" at this score (or 1 minus it)
    screen_min_batch: int = Field(50, ge=2)  # fewer scored items: the fixed confident-disagreement rule instead of cleanlab
    screen_noise_fraction: float = Field(0.3, gt=0, le=1)  # hold this fraction of the label issues cleanlab estimates, the likeliest first
    screen_small_batch_confidence: float = Field(
        0.99, gt=0.5, lt=1
    )  # below screen_min_batch: hold a label the model contradicts this surely
    flood_max_items: int = Field(50, ge=1)  # a client with more pending items than this ...
    flood_max_share: float = Field(0.1, gt=0, le=1)  # ... and more than this share of the users' items ...
    flood_over_median: float = Field(3.0, ge=1)  # ... and more than this many times the other clients' median is flooding
    flood_min_other_clients: int = Field(
        3, ge=1
    )  # ... judged only among this many other clients: a lone user or a small team is never a flood
    near_duplicate_bits: int = Field(6, ge=0, le=64)  # difference hashes this close are the same photo
