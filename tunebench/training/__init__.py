"""Training: one Accelerate loop shared by every method (run.train), and evaluation (evaluation.evaluate_run)."""
