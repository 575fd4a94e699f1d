"""What the notes ask before training: gradient checks (gradcheck.py) and pre-flight sanity checks (preflight.py)."""
