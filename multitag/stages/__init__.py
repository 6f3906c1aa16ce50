"""Pipeline stages as plain functions, one module a stage: `dvc repro` (through the CLI) and the
Prefect tasks both call these, so each stage is written once, and each stage's entry in
dvc.yaml names its own module among its code deps."""

from multitag.stages.evaluate import evaluate_stage, evaluate_uri
from multitag.stages.gate import gate_record, gate_stage
from multitag.stages.preprocess import preprocess_stage
from multitag.stages.register import outcome_message, register_stage
from multitag.stages.synthesize import synthesize_stage
from multitag.stages.train import train_in_subprocess, train_stage
from multitag.stages.validate import validate_stage

__all__ = [
    "evaluate_stage",
    "evaluate_uri",
    "gate_record",
    "gate_stage",
    "outcome_message",
    "preprocess_stage",
    "register_stage",
    "synthesize_stage",
    "train_in_subprocess",
    "train_stage",
    "validate_stage",
]
