"""Hyperparameter search: spaces, samplers, coarse-to-fine narrowing, sweep records and summaries.
`python -m framework.search` is the command."""
