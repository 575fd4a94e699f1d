"""Model ensembles (notes 6): combine trained runs or checkpoints into one predictor, compare members and ensembles
on one shared validation/test split, save each ensemble as one HDF5 file, optionally distill one into a student.

    python -m framework.ensemble 'source=[<run or sweep folder>, ...]' strategy=seeds|topk|snapshots|ema|soup|all

This module is the job: build_ensembles (validate the options, resolve the sources, score every member, run the
strategies, save the ensembles, write the report, distill); the command around it is framework/cli/ensemble.py.
Its parts: sources.py (what the user named -> runs), members.py (members, the shared evaluation split, Context),
strategies.py (the registry STRATEGIES and the built-in strategies), combine.py (the registry COMBINES: mean_prob,
mean_logits, vote), predictor.py and fileformat.py (the Ensemble and its HDF5 file), report.py, distill.py.

Selection (top-k, greedy soup, snapshots by score, the best run for snapshots/ema) uses validation accuracy only;
test accuracy is reported, never used to choose.
"""
from __future__ import annotations

import logging
import math
import pathlib
import time
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, OmegaConf

from framework.core.errors import ConfigError
from framework.core.files import write_json_atomic, write_text_atomic
from framework.core.params import param, section
from framework.ensemble.combine import COMBINES
from framework.ensemble.distill import DistillConfig, distill
from framework.ensemble.errors import EnsembleError, NotApplicable
from framework.ensemble.fileformat import json_safe, save_ensemble
from framework.ensemble.members import WEIGHTS, Context, val_key
from framework.ensemble.report import ensemble_row, fmt_acc, plot_report, render_markdown, write_tensorboard
from framework.ensemble.sources import as_list, resolve_sources
from framework.ensemble.strategies import ORDER, STRATEGIES, Built
from framework.ensemble.timing import TimingConfig

log = logging.getLogger("framework")


@dataclass
class EnsembleSettings:
    """Top-level options of conf/ensemble.yaml (source and the sections are read separately)."""

    strategy: str = param("all", "seeds | topk | snapshots | ema | soup | <plugin> | all")
    combine: str = param("mean_prob", "how prediction ensembles combine members: mean_prob | mean_logits | vote | "
                                      "<plugin>")
    weights: str = param("best", "which weights of each run", choices=tuple(WEIGHTS))
    save: bool = param(True, "write <name>.h5 for every ensemble")
    plot: bool = param(True, "write report.png (needs matplotlib)")
    tensorboard: bool = param(True, "write the report to TensorBoard event files in the output folder")
    include_unfinished: bool = param(False, "also take runs without summary.json (killed or still training) as "
                                            "members, with their last checkpoint")


SECTIONS = ("source", "timing", "distill")


def build_ensembles(cfg, out_dir) -> dict:
    """Build, score, save and report the ensembles `cfg` (shaped like conf/ensemble.yaml) asks for, into
    out_dir: <name>.h5 per ensemble, report.md, report.json, report.png, TensorBoard events, distill/. Returns
    the report dict (also written as report.json)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    out_dir = pathlib.Path(out_dir)
    names = ORDER + tuple(n for n in STRATEGIES.names() if n not in ORDER)
    top = {k: cfg[k] for k in cfg if k not in SECTIONS and k not in names}
    settings = section(EnsembleSettings, top, "", "python -m framework.ensemble")
    COMBINES.get(settings.combine)  # an unknown rule: a ConfigError listing the registered ones
    if settings.strategy != "all" and settings.strategy not in STRATEGIES:
        raise ConfigError("strategy", settings.strategy, f"all, or one of {', '.join(names)}")
    options = {n: section(STRATEGIES.get(n).config_cls, cfg.get(n), n) for n in names}
    timing = section(TimingConfig, cfg.get("timing"), "timing")
    distill_opts = section(DistillConfig, cfg.get("distill"), "distill")

    sources = [str(x) for x in as_list(cfg.get("source"))]
    runs, skipped = resolve_sources(sources, settings.include_unfinished)
    ctx = Context(runs, settings.weights, settings.combine, timing, options, sources)
    _score_runs(ctx)
    built = []
    chosen = names if settings.strategy == "all" else (settings.strategy,)
    for i, name in enumerate(chosen, 1):
        try:
            made = STRATEGIES.get(name).factory(options[name]).build(ctx)
            built += made
            log.info("[%d/%d strategies] %s: built %s", i, len(chosen), name,
                     ", ".join(b.ensemble.name for b in made) or "nothing")
        except NotApplicable as exc:
            if settings.strategy != "all":
                raise
            skipped.append({"strategy": name, "reason": str(exc)})
            log.info("[%d/%d strategies] %s: skipped (%s)", i, len(chosen), name, exc)
    if not built:
        reasons = " ".join(f"{s.get('strategy') or s.get('source')}: {s['reason']}" for s in skipped)
        raise EnsembleError(f"No strategy applies to these sources. {reasons}")
    names_built = [b.ensemble.name for b in built]
    if len(set(names_built)) < len(names_built):
        raise EnsembleError(f"Two ensembles share a name ({', '.join(names_built)}): a strategy plugin must name "
                            "its ensembles apart from the others'.")

    rows = [ensemble_row(ctx, b) for b in built]
    for b, row in zip(built, rows):
        if settings.save:
            row["file"] = str(save_ensemble(b.ensemble, out_dir / f"{b.ensemble.name}.h5"))
    members, seen = [], set()
    for b in built:
        for m in b.members:
            if id(m) not in seen:
                seen.add(id(m))
                members.append({"label": m.label, "file": str(m.file), "weights": m.use, "val_acc": m.val_acc,
                                "test_acc": m.test_acc, "params": int(m.theta.size), "seconds": m.seconds})
    s, ref = ctx.splits, ctx.reference
    report = {"sources": sources, "strategy": settings.strategy,
              "combine": settings.combine, "weights": settings.weights,
              "data": {"dataset": ref.cfg.data.name, "split_seed": OmegaConf.select(ref.cfg, "data.split_seed"),
                       "val": int(len(s.y_val)), "test": int(len(s.y_test)), "from": ref.label},
              "members": members, "ensembles": rows, "skipped": skipped, "distill": None}
    if distill_opts.enabled:
        report["distill"] = _distill(ctx, built, rows, distill_opts, out_dir / "distill")
    report = json_safe(report)
    markdown = render_markdown(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "report.md", markdown)
    write_json_atomic(out_dir / "report.json", report)
    if settings.plot:
        plot_report(report, out_dir / "report.png")
    if settings.tensorboard:
        write_tensorboard(report, markdown, out_dir)
    log.info("%s", markdown)
    return report


def _score_runs(ctx: Context) -> None:
    """Open and score every run's member up front (the strategies reuse them), one progress line per run with
    the best so far and the time left: a sweep of many trials takes a while to load."""
    from tqdm import tqdm

    start, best = time.monotonic(), None
    n = len(ctx.runs)
    for i, run in enumerate(ctx.runs, 1):
        m = ctx.run_member(run)
        if math.isfinite(m.val_acc) and (best is None or m.val_acc > best.val_acc):
            best = m
        left = (time.monotonic() - start) / i * (n - i)
        log.info("[%d/%d runs] %s: val acc %s, test acc %s | best %s | %s", i, n, m.label, fmt_acc(m.val_acc),
                 fmt_acc(m.test_acc), f"{best.val_acc:.4f} ({best.label})" if best else "-",
                 f"ETA {tqdm.format_interval(left)}" if i < n else "all scored")


def _distill(ctx: Context, built: list[Built], rows: list[dict], opts, out_dir: pathlib.Path) -> dict:
    """Distill the teacher ensemble; rows: best member, teacher, distilled student, hard-label student."""
    by_name = {b.ensemble.name: (b, r) for b, r in zip(built, rows)}
    if opts.teacher == "best":  # prediction ensembles first: a one-model teacher is no ensemble to compress
        teacher, row = max(zip(built, rows), key=lambda br: (len(br[0].ensemble.parts) > 1, br[1]["val_acc"]
                                                              if math.isfinite(br[1]["val_acc"]) else -1.0))
    elif opts.teacher in by_name:
        teacher, row = by_name[opts.teacher]
    else:
        raise ConfigError("distill.teacher", opts.teacher, f"best, or one of the ensembles built: "
                                                           f"{', '.join(by_name)}")
    best = max(teacher.members, key=val_key)
    log.info("distilling %s (T=%g, alpha=%g) into a student", teacher.ensemble.name, opts.temperature, opts.alpha)
    result = distill(teacher.ensemble, ctx.splits, ctx.reference.cfg, opts, out_dir,
                     cost=lambda fn: ctx.relative_cost(fn, teacher.members))
    pred = np.argmax(teacher.ensemble.model.scores(teacher.ensemble.params, ctx.splits.X_test), axis=1)
    best_pred = np.argmax(best.ckpt.model.scores(best.theta, ctx.splits.X_test), axis=1)
    head = [{"name": f"best member ({best.label}, by val)", "params": int(best.theta.size),
             "val_acc": best.val_acc, "test_acc": best.test_acc, "cost": 1.0 if row["cost"] is not None else None,
             "agreement": float(np.mean(best_pred == pred)) if len(pred) else None},
            {"name": f"teacher: {teacher.ensemble.name}", "params": row["params"], "val_acc": row["val_acc"],
             "test_acc": row["test_acc"], "cost": row["cost"], "agreement": 1.0}]
    return {**result, "rows": head + result["students"]}
