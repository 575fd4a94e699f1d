"""Speed benchmarks against PyTorch, JAX, scikit-learn and Lightning (not installed with the package):
`python -m framework.bench` from a checkout."""
