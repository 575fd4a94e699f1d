"""`python -m framework.ensemble [overrides]`: combine trained runs into ensembles, compare them with their members
on one shared validation/test split, save each as one HDF5 file, optionally distill one into a student (notes 6).

    python -m framework.ensemble 'source=[<run or sweep folder>, ...]' strategy=seeds|topk|snapshots|ema|soup|all

A Hydra app of conf/ensemble.yaml: its report, ensemble files and log go to outputs/ensembles/<date>/<time>/. The
job itself is framework/ensemble/job.py."""
from __future__ import annotations

import pathlib


def task(cfg) -> float:
    """The Hydra task: build the ensembles into Hydra's run folder; returns the best ensemble's val accuracy."""
    from hydra.core.hydra_config import HydraConfig

    from framework.ensemble.job import build_ensembles
    from framework.ensemble.report import best_finite

    report = build_ensembles(cfg, pathlib.Path(HydraConfig.get().runtime.output_dir))
    return best_finite(e["val_acc"] for e in report["ensembles"])


def hydra_app():
    """The @hydra.main app of conf/ensemble.yaml around `task`, with the framework's error boundary."""
    import hydra

    from framework.cli.app import CONF_DIR, user_errors

    return hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="ensemble")(user_errors(task))


def main() -> None:
    """`python -m framework.ensemble`: check the overrides (unknown keys, pasted paths), then run the app."""
    from framework.cli.app import main_entry

    main_entry(hydra_app(), config_name="ensemble")
