"""The commands: the Hydra entry shared by all (app.py), config composition and override checks, and one module
per command (check, list; training is framework/__main__.py)."""
