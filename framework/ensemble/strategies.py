"""Ensemble strategies: the registry STRATEGIES (a plugin adds one with @STRATEGIES.register("name",
config=Dataclass) on a Strategy subclass) and the built-in strategies, each choosing members by validation
accuracy only:
  seeds      runs that differ only in `seed` (notes 6.2); their configs are compared key by key
  topk       the k runs with the best validation accuracy, e.g. the trials of a sweep (6.3)
  snapshots  several checkpoints of one run (6.4): under cosine warm restarts the ends of the cycles (the minima),
             else the last k epochs
  ema        the running average of a run's weights next to its raw weights (6.5)
  soup       weight averaging of checkpoints of one architecture: uniform, and greedy (members in order of
             validation accuracy, each kept only if the averaged weights do not lose validation accuracy); the
             batchnorm statistics of averaged weights are recomputed on training rows (ensemble.batchnorm)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from omegaconf import OmegaConf

from framework.components.schedule import cycle_end_epochs
from framework.core.params import param
from framework.core.registry import Registry
from framework.ensemble.batchnorm import recompute_batchnorm
from framework.ensemble.errors import NotApplicable
from framework.ensemble.members import (Context, Member, check_same_architecture, config_differences,
                                        describe_differences, val_key)
from framework.ensemble.predictor import Ensemble

log = logging.getLogger("framework")

ORDER = ("seeds", "topk", "snapshots", "ema", "soup")  # strategy=all runs these first, then plugins by name
STRATEGIES = Registry("ensemble strategy", "strategy")


@dataclass
class Built:
    """An ensemble a strategy made, with the members it is compared against (its pool) and a note."""

    ensemble: Ensemble
    members: list[Member]
    note: str = ""
    averaged: list[Member] | None = None  # a soup: the members whose weights it averages


class Strategy:
    """Base of ensemble strategies: built with its validated config; build(ctx) returns the ensembles it makes
    and raises NotApplicable when the sources do not fit. Choose members by validation accuracy only."""

    def __init__(self, cfg):
        self.cfg = cfg

    def build(self, ctx: Context) -> list[Built]:
        raise NotImplementedError


def _need_runs(ctx: Context, strategy: str, n: int = 2) -> None:
    if len(ctx.runs) < n:
        raise NotApplicable(f"strategy {strategy} needs at least {n} runs; the sources hold {len(ctx.runs)}.")


@STRATEGIES.register("seeds")
class Seeds(Strategy):
    """Runs that differ only in `seed` (notes 6.2): variety from the initialization and data order alone."""

    def build(self, ctx):
        _need_runs(ctx, "seeds")
        members = [ctx.run_member(r) for r in ctx.runs]
        ref = members[0]
        for m in members[1:]:
            diffs = [d for d in config_differences(ref.cfg, m.cfg) if d[0] != "seed"]
            if diffs:
                raise NotApplicable(f"strategy seeds needs runs that differ only in `seed`, but {m.label} differs "
                                    f"from {ref.label}: {describe_differences(diffs, ref.label)}. Use strategy=topk "
                                    "to combine runs with different hyperparameters.")
        seen = {}
        for m in members:
            if m.cfg.seed in seen:
                raise NotApplicable(f"strategy seeds: {seen[m.cfg.seed]} and {m.label} both have seed {m.cfg.seed}: "
                                    "identical runs add nothing to an ensemble.")
            seen[m.cfg.seed] = m.label
        return [Built(ctx.ensemble("seeds", "seeds", members), members, f"seeds {sorted(seen)}")]


@dataclass
class TopkConfig:
    k: int = param(5, "how many of the runs with the best validation accuracy to combine", range="[2, inf)")


@STRATEGIES.register("topk", config=TopkConfig)
class TopK(Strategy):
    """The k runs with the best validation accuracy, e.g. the best trials of a sweep (notes 6.3)."""

    def build(self, ctx):
        _need_runs(ctx, "topk")
        members = [ctx.run_member(r) for r in ctx.runs]
        k = min(self.cfg.k, len(members))
        chosen = sorted(members, key=val_key, reverse=True)[:k]  # stable: the earlier run wins a tie
        return [Built(ctx.ensemble(f"top{k}", "topk", chosen), chosen,
                      f"the {k} best of {len(members)} runs by validation accuracy")]


@dataclass
class SnapshotsConfig:
    select: str = param("auto", "which checkpoints: cycles (ends of the cosine cycles under warm restarts), last "
                                "(the last k epochs), best (the k best epochs on validation), auto (cycles when "
                                "the schedule restarts, else last)", choices=("auto", "cycles", "last", "best"))
    k: int = param(5, "at most this many checkpoints", range="[2, inf)")


@STRATEGIES.register("snapshots", config=SnapshotsConfig)
class Snapshots(Strategy):
    """Several checkpoints of one run (notes 6.4; with several runs, the best one by validation)."""

    def members(self, ctx) -> tuple[list[Member], str]:
        run = ctx.best_run()
        files = run.epoch_files()
        if len(files) < 2:
            raise NotApplicable(f"strategy snapshots needs at least 2 epoch checkpoints of {run.label}; it keeps "
                                f"{len(files)} (trained with checkpoint.every=0, or keep_top_k pruned them).")
        k, select = self.cfg.k, self.cfg.select
        ref = ctx.run_member(run)
        ends = []
        if select in ("auto", "cycles"):
            last = max(files)
            ends = cycle_end_epochs(ref.cfg, int(ref.ckpt.info["steps_per_epoch"]), last) + [last]
            if len(ends) < 2 and select == "cycles":
                raise NotApplicable(f"snapshots.select=cycles: the schedule of {run.label} "
                                    f"({ref.cfg.schedule.name}) never restarts; use schedule=cosine with "
                                    "schedule.restart=true, or snapshots.select=last.")
            missing = [e for e in ends if e not in files]
            if missing:
                raise NotApplicable(f"{run.label} has no checkpoint for the cycle ends {missing} "
                                    "(checkpoint.every > 1 or keep_top_k removed them).")
            select = "cycles" if len(ends) >= 2 else "last"
        if select == "cycles":
            epochs = ends[-k:]
        elif select == "best":
            scored = [(ctx.member(f, "raw", f"{run.label}:epoch{e:03d}").val_acc, e) for e, f in files.items()]
            epochs = sorted(e for _, e in sorted(scored, key=lambda t: (-t[0], t[1]))[:k])
        else:
            epochs = list(files)[-k:]
        members = [ctx.member(files[e], "raw", f"{run.label}:epoch{e:03d}") for e in epochs]
        return members, f"{select}: epochs {epochs} of {run.label}"

    def build(self, ctx):
        members, note = self.members(ctx)
        return [Built(ctx.ensemble("snapshots", "snapshots", members), members, note)]


@STRATEGIES.register("ema")
class EMA(Strategy):
    """The running average of the weights (notes 6.5) next to the raw weights at the end of the best run."""

    def build(self, ctx):
        run = ctx.best_run()
        raw = ctx.member(run.weights_file(), "raw", f"{run.label}:last")
        ema = raw.ckpt.ema_params
        if ema is None:
            raise NotApplicable(f"strategy ema: {run.label} kept no running average (trained with ema.decay=0).")
        decay = OmegaConf.select(raw.cfg, "ema.decay")
        ens = ctx.single("ema", "ema", raw, ema, f"{run.label}:ema", f"{raw.file}:ema")
        return [Built(ens, [raw], f"EMA (decay {decay}) of {run.label} against its raw weights at the end")]


@dataclass
class SoupConfig:
    pool: str = param("auto", "members to average: runs (each run's chosen weights), snapshots (the checkpoints "
                              "strategy snapshots picks), auto (runs when there are several, else snapshots)",
                      choices=("auto", "runs", "snapshots"))
    methods: list[str] = param(["uniform", "greedy"], "uniform: average all; greedy: best first, keep a member "
                                                      "only if validation accuracy does not drop",
                               choices=("uniform", "greedy"))


def average_weights(members: list[Member]) -> np.ndarray:
    """Mean of the members' (P,) weights, accumulated in float64, in their dtype."""
    total = np.zeros(members[0].theta.size, dtype=np.float64)
    for m in members:
        total += m.theta
    return (total / len(members)).astype(members[0].theta.dtype)


@STRATEGIES.register("soup", config=SoupConfig)
class Soup(Strategy):
    """Weight averaging of checkpoints with one architecture ("model soups"): uniform and greedy."""

    def build(self, ctx):
        pool = self.cfg.pool
        if pool == "auto":
            pool = "runs" if len(ctx.runs) >= 2 else "snapshots"
        if pool == "runs":
            _need_runs(ctx, "soup (pool runs)")
            members = [ctx.run_member(r) for r in ctx.runs]
        else:
            members, _ = Snapshots(ctx.options.get("snapshots") or SnapshotsConfig()).members(ctx)
        check_same_architecture(members)
        model = members[0].ckpt.model
        batch = int(OmegaConf.select(members[0].cfg, "batch_size", default=32))

        def soup_of(group):  # averaged weights, their batchnorm statistics measured again (ensemble.batchnorm)
            return recompute_batchnorm(model, average_weights(group), ctx.splits.X_train, batch)

        out = []
        if "uniform" in self.cfg.methods:
            theta, done = soup_of(members)
            note = f"mean of {len(members)} {pool}" + (f"; {done.describe()}" if done else "")
            out.append(Built(self._soup(ctx, "soup_uniform", members, theta), members, note, members))
        if "greedy" in self.cfg.methods:
            order = sorted(members, key=val_key, reverse=True)
            kept, theta, best, done = [order[0]], order[0].theta, order[0].val_acc, None
            for m in order[1:]:
                candidate, recomputed = soup_of(kept + [m])
                val = ctx.val_accuracy(model, candidate)
                if val >= best:
                    kept, theta, best, done = kept + [m], candidate, val, recomputed
            labels = [m.label for m in kept]
            note = f"kept {len(kept)} of {len(members)} {pool}" + (f": {', '.join(labels)}" if len(kept) <= 3 else
                                                                   " (listed in report.json)")
            out.append(Built(self._soup(ctx, "soup_greedy", kept, theta), members,
                             note + (f"; {done.describe()}" if done else ""), kept))
        for b in out:
            log.info("%s: %s", b.ensemble.name, b.note)
        return out

    @staticmethod
    def _soup(ctx, name, members, theta):
        return ctx.single(name, "soup", members[0], theta, f"{name} of {len(members)}",
                          ", ".join(f"{m.file}:{m.use}" for m in members))
