"""Hyperparameter search (notes 5), one module per job: space (the searched parameters), samplers (the registry
SAMPLERS: random, grid, tpe), narrowing (coarse to fine), folder (reading a sweep folder), summary (ranking, border
warnings, summary files), record (search.json), resume (a stopped sweep), trial_logging (a sweep job's console),
warmup (Numba cache) and errors (SearchError); its command `python -m framework.search` is framework/cli/search.py.
The Hydra Sweeper in hydra_plugins/framework_sweeper drives a search with these pieces."""
