"""Hyperparameter tuning jobs: their ranges, status machine and trials (the state side; runner/tuning drives them)."""
