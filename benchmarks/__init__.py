"""Speed benchmarks against PyTorch, JAX, scikit-learn and Lightning (not installed with the package):
`python -m framework.bench` from a checkout. The step benchmark starts in `cli` (options), `suite` runs it on the
`workloads`, timing (`timing`) the framework's step (`framework_runner`) against the NumPy step (`reference_steps`),
the peers (`peer_steps`) and the GEMM peak (`gemm`), with `breakdown` and `startup` for where the time goes and how
long a process takes to its first step, and `report` for the tables and goals; `e2e` is the whole-job benchmark,
whose peers are the scripts in peers/."""
