"""The report of an ensemble job: ensemble_row scores one built ensemble against its members (gains, evaluation
cost), render_markdown writes the tables, write_tensorboard the scalars and text, plot_report the bar chart."""
from __future__ import annotations

import logging
import math
import pathlib
import re

import numpy as np

from framework.core.files import save_figure_atomic
from framework.engine.metrics import accuracy
from framework.ensemble.members import Context, val_key
from framework.ensemble.strategies import Built

log = logging.getLogger("framework")


def best_finite(values) -> float:
    """The largest finite value (None and NaN left out), NaN when there is none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return max(finite) if finite else math.nan


def ensemble_row(ctx: Context, b: Built) -> dict:
    """Scores of one built ensemble on the shared split, its gains and evaluation cost. Gains compare with the
    ensemble's own members: val_gain with the best validation accuracy; test_gain with the test accuracy of the
    member validation picks (the model one would deploy without the ensemble); test_gain_oracle with the best
    test accuracy of any member (hindsight: a stricter bar, biased upwards by the pick of the maximum)."""
    ens, s = b.ensemble, ctx.splits
    val = accuracy(ens.model.scores(ens.params, s.X_val), s.y_val)
    test = accuracy(ens.model.scores(ens.params, s.X_test), s.y_test)
    picked = max(b.members, key=val_key)
    best_val, best_test = best_finite(m.val_acc for m in b.members), best_finite(m.test_acc for m in b.members)
    ens.metrics.update(val_acc=val, test_acc=test)
    return {"name": ens.name, "strategy": ens.strategy, "members": [m.label for m in b.members],
            "parts": len(ens.parts), "combine": ens.combine if len(ens.parts) > 1 else "weights",
            "val_acc": val, "test_acc": test, "picked_member": picked.label, "picked_member_test_acc":
            picked.test_acc, "best_member_val_acc": best_val, "best_member_test_acc": best_test,
            "val_gain": val - best_val, "test_gain": test - picked.test_acc, "test_gain_oracle": test - best_test,
            "cost": ctx.relative_cost(lambda: ens.model.scores(ens.params, ctx.X_eval), b.members),
            "params": int(ens.params.size), "note": b.note, "file": None,
            "averaged": [m.label for m in b.averaged] if b.averaged else None}


def fmt_acc(x) -> str:
    """An accuracy for tables and logs: 4 decimals, a dash when unknown."""
    return "–" if x is None or not math.isfinite(x) else f"{x:.4f}"


def _gain(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:+.4f}"


def _cost(x) -> str:
    return "–" if x is None else f"{x:.2f}x"


def render_markdown(report: dict) -> str:
    """The report as Markdown tables: members, ensembles, skipped strategies, distillation."""
    d = report["data"]
    lines = ["# Ensembles (notes 6)", "",
             f"Sources: {', '.join(report['sources'])}. Strategy: {report['strategy']}; prediction ensembles "
             f"combine by {report['combine']}; members use their {report['weights']} weights.", "",
             f"Evaluation data: {d['dataset']} (data.split_seed={d['split_seed']}), {d['val']} validation and "
             f"{d['test']} test rows, rebuilt from the config of the first member ({d['from']}); every member "
             "shares this dataset, split, preprocessing and classes. Selection (top-k, greedy soup, best run) "
             "uses validation accuracy only; test accuracy is reported, never used to choose.", "",
             "## Members", "", "| member | weights | val acc | test acc | params |", "|---|---|---|---|---|"]
    for m in report["members"]:
        lines.append(f"| {m['label']} | {m['weights']} | {fmt_acc(m['val_acc'])} | {fmt_acc(m['test_acc'])} | "
                     f"{m['params']:,} |")
    lines += ["", "## Ensembles", "",
              "| ensemble | members | combine | val acc | test acc | val gain | test gain | test gain (oracle) | "
              "eval cost | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in report["ensembles"]:
        lines.append(f"| {e['name']} | {len(e['members'])} | {e['combine']} | {fmt_acc(e['val_acc'])} | "
                     f"{fmt_acc(e['test_acc'])} | {_gain(e['val_gain'])} | {_gain(e['test_gain'])} | "
                     f"{_gain(e['test_gain_oracle'])} | {_cost(e['cost'])} | {e['note']} |")
    lines += ["", "Gains compare with the ensemble's own members (for ema: the raw weights). Val gain: minus the "
                  "best member's validation accuracy. Test gain: minus the test accuracy of the member validation "
                  "picks (the single model one would deploy). Test gain (oracle): minus the best test accuracy of "
                  "any member, known only in hindsight. With weights=best a member's validation accuracy is the "
                  "best of its epochs, picked on this same split: biased upwards, which lowers every val gain. "
                  "Eval cost: measured time to predict the val+test rows relative to one of its members (mean "
                  "over members; BLAS on one thread)."]
    if report["skipped"]:
        lines += ["", "## Skipped", ""]
        lines += [f"- {s.get('strategy') or s.get('source')}: {s['reason']}" for s in report["skipped"]]
    dist = report.get("distill")
    if dist:
        lines += ["", f"## Distillation (notes 6.6): teacher {dist['teacher']}, T={dist['temperature']:g}, "
                      f"alpha={dist['alpha']:g} (hard-label weight)", "",
                  "| model | params | val acc | test acc | eval cost | agrees with teacher (test) |",
                  "|---|---|---|---|---|---|"]
        for r in dist["rows"]:
            agree = "–" if r.get("agreement") is None else f"{r['agreement']:.4f}"
            lines.append(f"| {r['name']} | {r['params']:,} | {fmt_acc(r['val_acc'])} | {fmt_acc(r['test_acc'])} | "
                         f"{_cost(r.get('cost'))} | {agree} |")
    return "\n".join(lines) + "\n"


def _tag(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=:-]", "_", text)


def write_tensorboard(report: dict, markdown: str, out_dir: pathlib.Path) -> bool:
    """Scalars member/<label>/{val,test}_acc and ensemble/<name>/{val_acc, test_acc, val_gain, test_gain,
    cost} at step 0, and the report as the text `ensemble_report`. False when the writer is unavailable."""
    try:
        from framework.monitoring.tensorboard import EventWriter
    except ImportError:
        log.warning("framework.monitoring.tensorboard is unavailable: no TensorBoard events for the report.")
        return False
    with EventWriter(out_dir) as w:
        for m in report["members"]:
            w.scalars({f"member/{_tag(m['label'])}/val_acc": m["val_acc"] if m["val_acc"] is not None else math.nan,
                       f"member/{_tag(m['label'])}/test_acc": m["test_acc"] if m["test_acc"] is not None
                       else math.nan}, 0)
        for e in report["ensembles"]:
            w.scalars({f"ensemble/{_tag(e['name'])}/{k}": e[k] for k in
                       ("val_acc", "test_acc", "val_gain", "test_gain", "cost") if e.get(k) is not None}, 0)
        w.text("ensemble_report", markdown, 0)
    return True


def plot_report(report: dict, path: pathlib.Path) -> bool:
    """Bar chart of validation and test accuracy, members (grey) against ensembles (colour), with the best
    member's test accuracy as a dashed line. Written atomically; False when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: no report.png (pip install matplotlib).")
        return False
    rows = [(m["label"], m["val_acc"], m["test_acc"], False) for m in report["members"]]
    rows += [(e["name"], e["val_acc"], e["test_acc"], True) for e in report["ensembles"]]
    for r in (report.get("distill") or {}).get("rows", [])[2:]:
        rows.append((r["name"], r["val_acc"], r["test_acc"], True))
    vals = [v for _, a, b, _ in rows for v in (a, b) if v is not None and math.isfinite(v)]
    if not vals:
        return False
    fig = Figure(figsize=(max(6.0, 0.55 * len(rows) + 2.0), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(len(rows))
    nan = [math.nan if v is None else v for v in (r[1] for r in rows)], \
        [math.nan if v is None else v for v in (r[2] for r in rows)]
    ax.bar(x - 0.2, nan[0], 0.4, color=["#7aa6d6" if r[3] else "#c8c8c8" for r in rows], label="validation")
    ax.bar(x + 0.2, nan[1], 0.4, color=["#1f5fa8" if r[3] else "#7f7f7f" for r in rows], label="test")
    best = best_finite(m["test_acc"] for m in report["members"])
    if math.isfinite(best):
        ax.axhline(best, color="black", linestyle="--", linewidth=0.8, label="best member (test)")
    ax.set_xticks(x, [r[0] for r in rows], rotation=40, ha="right", fontsize=7)
    ax.set_ylim(max(0.0, min(vals) - 0.02), min(1.0, max(vals) + 0.01))
    ax.set_ylabel("accuracy")
    ax.set_title("members (grey), ensembles and students (blue): validation light, test dark", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars fill the axes
    ax.grid(axis="y", alpha=0.3)
    save_figure_atomic(fig, path)
    return True
