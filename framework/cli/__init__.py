"""The commands, one module per command: train (`python -m framework`, whose Hydra task is framework/__main__.py),
check, list, evaluate, ensemble, search and bench; the Hydra entry and error boundary they share (app.py), the
compose-based arguments of the commands that write nothing (args.py), config composition from Python (compose.py)
and the override checks (overrides.py)."""
