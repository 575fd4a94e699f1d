"""Ensembles built from the outputs folder: sources, strategies, combination, the ensemble file, reports,
distillation. `python -m framework.ensemble` is the command (job.py)."""
