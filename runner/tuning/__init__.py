"""Tuning jobs driven: the search (optuna) and the tuner that launches, judges and ends trials."""
