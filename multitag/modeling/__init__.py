"""Arrays in, scored models out: architectures, training, the probe baseline, evaluation,
metrics and their plots. Knows nothing of MLflow or serving."""
