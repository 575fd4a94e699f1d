"""Hydra Sweeper plugin of the framework: random, staged (coarse-to-fine), grid and optional TPE search.

Hydra imports every module under the `hydra_plugins` namespace at start-up to discover plugins, so the modules
here import only Hydra; the search logic (framework.search, NumPy, optional Optuna) loads when a sweep starts.
Select it with `hydra/sweeper=framework_random` or a preset such as `+search=coarse_to_fine`.
"""
