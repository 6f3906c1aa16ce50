"""Scored models in, a champion out: MLflow tracking and registry, the evaluation gate, the
served-model contract (`Predictor`), the fresh-process smoke test and data/code versions."""
