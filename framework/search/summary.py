"""The summary of a sweep: its trials ranked by validation accuracy, the border warnings of notes 5.6 (bounded by
the allowed ranges of the components' options) and the summary files (Markdown, JSON, PNG plot) written from them.
"""
from __future__ import annotations

import logging
import math
import pathlib

from framework.core.errors import FrameworkError
from framework.core.files import save_figure_atomic, write_json_atomic, write_text_atomic
from framework.search.folder import BAD, STATUSES, Sweep, load_sweep
from framework.search.space import Param

log = logging.getLogger("framework.search")

FINAL_NAME = "search_summary"
EDGE = 0.1  # border warning when the best value lies in the outer 10% of its range (notes 5.6)


def is_finite_number(x) -> bool:
    """A finite int or float (a bool, None, NaN, inf or text is not): metrics of JSON files may be any of them."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def rank(trials: list[dict]) -> list[dict]:
    """Trials by validation accuracy, best first; ties broken by the lower validation loss, then the earlier
    trial. Trials without an accuracy (failed, diverged before an epoch, pending) come last, by number."""
    def key(t):
        acc, loss = t.get("val_acc"), t.get("val_loss")
        if not is_finite_number(acc):
            return (1, 0.0, 0.0, t["num"])
        return (0, -acc, loss if is_finite_number(loss) else math.inf, t["num"])

    return sorted(trials, key=key)


def best_trial(trials: list[dict]) -> dict | None:
    """The top-ranked trial that finished ok (a diverged or running trial is never `best`)."""
    for t in rank(trials):
        if t.get("status") == "ok" and is_finite_number(t.get("val_acc")):
            return t
    return None


def _limit_text(x: float) -> str:
    return f"{x:g}"


def border_warnings(best: dict | None, space: list[Param], edge: float = EDGE,
                    limits: dict[str, str] | None = None) -> list[dict]:
    """Notes 5.6: when the best value of a numeric parameter lies in the outer `edge` fraction of its searched
    range (in log10 for log ranges) the optimum may lie outside: name the parameter and the direction to widen.

    limits: {parameter: allowed range in interval notation, e.g. "(0, 1]"} (see param_limits). A range never
    widens past its allowed limit: when the searched range already ends there, the warning says the optimum may
    sit at the limit instead of advising to widen (at_limit true)."""
    from framework.core.params import parse_interval

    out = []
    if best is None:
        return out
    for p in space:
        value = (best.get("params") or {}).get(p.name)
        if not p.numeric or not is_finite_number(value) or p.low == p.high:
            continue
        u = p.to_unit(value)
        if u > edge and u < 1.0 - edge:
            continue
        direction = "lower" if u <= edge else "higher"
        side = "bottom" if direction == "lower" else "top"
        scale = " (log scale)" if p.log else ""
        allowed = (limits or {}).get(p.name)
        limit = None
        if allowed:
            try:
                lo, hi, _, _ = parse_interval(allowed)
                limit = lo if direction == "lower" else hi
            except ValueError:
                limit = None
        if limit is not None and (not math.isfinite(limit) or (p.log and limit <= 0)):
            limit = None  # no limit that side (a log range never reaches 0)
        where = (f"{p.name}: the best trial's value {value:g} lies in the {side} {edge:.0%} of the searched "
                 f"range [{p.low:g}, {p.high:g}]{scale}")
        reached = limit is not None and (p.low <= limit if direction == "lower" else p.high >= limit)
        if reached:
            message = (f"{where}, which already ends at the allowed limit {_limit_text(limit)} of {p.name} "
                       f"(allowed {allowed}): there is nothing beyond it to search; the optimum may sit at the limit "
                       "(notes 5.6).")
        else:
            bound = f" (up to its allowed limit {_limit_text(limit)})" if limit is not None and direction == \
                "higher" else (f" (down to its allowed limit {_limit_text(limit)})" if limit is not None else "")
            message = (f"{where}; the optimum may be {direction}: widen the range toward {direction} "
                       f"values{bound} (notes 5.6).")
        out.append({
            "param": p.name, "direction": direction, "value": value, "low": p.low, "high": p.high,
            "position": round(u, 4), "allowed": allowed, "at_limit": reached, "message": message,
        })
    return out


# config keys whose allowed range is the one of a component's field (the main knobs default to them)
_ALIASES = {"lr": ("optimizer", "lr"), "reg": ("regularizer", "reg")}


def param_limits(cfg: dict | None, names) -> dict[str, str]:
    """{name: allowed range} of the searched keys `names` from the registered component configs: for
    `<group>.<field>` (e.g. model.keep_prob) the range of that field of the component the config `cfg` (a plain
    dict of a trial's composed config) selects in <group>; lr and reg use the optimizer's and the regularizer's.
    Keys without a registered range (or a config without that group) are left out."""
    import dataclasses

    from framework.core.registry import ALL

    out = {}
    if not isinstance(cfg, dict):
        return out
    registries = {r.group: r for r in ALL}
    for name in names:
        group, _, field_name = name.partition(".")
        if name in _ALIASES:
            group, field_name = _ALIASES[name]
        node = cfg.get(group)
        if group not in registries or not isinstance(node, dict) or not field_name or "." in field_name:
            continue
        try:
            entry = registries[group].get(str(node.get("name")))
        except FrameworkError:
            continue
        for f in dataclasses.fields(entry.config_cls):
            if f.name == field_name and f.metadata.get("range"):
                out[name] = f.metadata["range"]
    return out


def _job_config(sweep: Sweep) -> dict | None:
    """The composed config (.hydra/config.yaml) of the first job folder that has one, as a plain dict."""
    import yaml

    for t in sorted(sweep.trials, key=lambda t: t["num"]):
        if t.get("dir"):
            try:
                with open(sweep.folder / t["dir"] / ".hydra" / "config.yaml") as f:
                    data = yaml.safe_load(f)
                if isinstance(data, dict):
                    return data
            except (OSError, yaml.YAMLError):
                continue
    return None


def _fmt(x, spec=".4f") -> str:
    return format(x, spec) if is_finite_number(x) else "-"


def _param_text(p: Param, value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if p.kind == "float" and is_finite_number(value) else str(value)


def summarize(sweep: Sweep, stage: int | None = None) -> dict:
    """The summary of one stage (stage=S) or of the whole sweep (stage=None) as a JSON-ready dict."""
    trials = [t for t in sweep.trials if stage is None or t.get("stage") == stage]
    ranked = rank(trials)
    best = best_trial(trials)
    counts = {s: sum(1 for t in trials if t.get("status") == s) for s in STATUSES}
    limits = sweep.meta.get("limits")
    if limits is None:  # a sweep without a sweeper record: the ranges registered for the jobs' components
        limits = param_limits(_job_config(sweep), [p.name for p in sweep.space if p.numeric])
    return {
        "sweep_dir": str(sweep.folder),
        "stage": stage,
        "sampler": sweep.meta.get("sampler"),
        "seed": sweep.meta.get("seed"),
        "wall_time_s": sweep.meta.get("wall_time_s"),
        "counts": {k: v for k, v in counts.items() if v},
        "n_trials": len(trials),
        "state": sweep.state,
        "best": best,
        "warnings": border_warnings(best, sweep.space, limits=limits),
        "space": [p.to_json() for p in sweep.space],
        "stages": sweep.stages,
        "trials": ranked,
    }


def render_markdown(summary: dict) -> str:
    """The summary as Markdown: headline, warnings, stages with their ranges, ranked trials, failures."""
    space = [Param.from_json(p) for p in summary["space"]]
    stage = summary["stage"]
    title = f"stage {stage}" if stage is not None else "all stages"
    lines = [f"# Search summary ({title}): {pathlib.Path(summary['sweep_dir']).name}", ""]
    counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in summary["counts"].items()) or "no trials yet"
    head = f"{summary['n_trials']} trials ({counts})"
    if summary.get("sampler"):
        head += f"; sampler {summary['sampler']}, seed {summary['seed']}"
    if is_finite_number(summary.get("wall_time_s")) and stage is None:
        head += f"; sweep wall time {summary['wall_time_s']:.1f} s"
    lines.append(head + ".")
    if summary.get("state") == "stopped":
        lines.append("The sweep stopped before it finished (its sweeper process is gone). `python -m framework "
                     f"resume={pathlib.Path(summary['sweep_dir'])}` finishes it.")
    best = summary["best"]
    if best is not None:
        values = ", ".join(f"{p.name}={_param_text(p, best['params'].get(p.name))}" for p in space)
        lines.append(f"Best: validation accuracy {best['val_acc']:.4f} (trial {best['num']}"
                     f"{', stage ' + str(best['stage']) if best.get('stage') else ''}): {values}.")
    lines.append("")
    if summary["warnings"]:
        lines += ["## Border warnings (notes 5.6)", ""] + [f"- {w['message']}" for w in summary["warnings"]] + [""]
    lines += ["## Searched space", "", "| parameter | distribution |", "|---|---|"]
    lines += [f"| {p.name} | {p.describe()} |" for p in space] + [""]
    if summary["stages"]:
        numeric = [p for p in space if p.numeric]
        lines += ["## Stages", "",
                  "| stage | trials | state | overrides | " + " | ".join(f"{p.name} range" for p in numeric) + " |",
                  "|---" * (4 + len(numeric)) + "|"]
        for s in summary["stages"]:
            ranges = {q["name"]: q for q in s.get("space") or []}
            cells = []
            for p in numeric:
                q = ranges.get(p.name)
                cells.append(f"[{q['low']:.4g}, {q['high']:.4g}]" if q else "-")
            state = s.get("state", "-")
            if summary.get("state") == "stopped":  # the sweeper is gone: its open stages will not go on
                state = {"running": "interrupted", "pending": "not started"}.get(state, state)
            lines.append(f"| {s['index']} | {s['n_trials']} | {state} | "
                         f"{' '.join(s.get('overrides') or []) or '-'} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Trials (best validation accuracy first; trial N runs in the job folder N_...)", "",
              "| rank | trial | stage | status | val acc | epochs | wall s | " +
              " | ".join(p.name for p in space) + " |",
              "|---" * (7 + len(space)) + "|"]
    for i, t in enumerate(summary["trials"], 1):
        params = t.get("params") or {}
        lines.append(
            f"| {i} | {t['num']} | {t.get('stage') or '-'} | {str(t.get('status')).replace('_', ' ')} | "
            f"{_fmt(t.get('val_acc'))} | "
            f"{t.get('epochs') if t.get('epochs') is not None else '-'} | {_fmt(t.get('wall_time_s'), '.1f')} | " +
            " | ".join(_param_text(p, params.get(p.name)) for p in space) + " |")
    stopped = [t for t in summary["trials"] if t.get("status") in BAD]
    if stopped:
        lines += ["", "## Stopped or failed trials", ""]
        for t in sorted(stopped, key=lambda t: t["num"]):
            message = " ".join(str(t.get("message") or "").split())
            lines.append(f"- trial {t['num']} ({t['status']}): {message[:300]}")
    waiting = sorted(t["num"] for t in summary["trials"] if t.get("status") == "not_started")
    if waiting:
        lines += ["", "## Trials that never started", "",
                  f"- {len(waiting)} planned trial(s) were never launched: jobs {_ranges(waiting)}."]
    return "\n".join(lines) + "\n"


def _ranges(nums: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out, start = [], None
    for i, n in enumerate(nums):
        if start is None:
            start = n
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            out.append(f"{start}-{n}" if n > start else str(n))
            start = None
    return ", ".join(out)


_PLOT_NOTICE = False


def plot(summary: dict, path: pathlib.Path) -> bool:
    """Validation accuracy against each searched parameter (log x axis for log parameters; categorical axis for
    choices), one colour per stage, failed/diverged trials as red crosses on the bottom edge. Writes a PNG
    atomically; returns False when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        global _PLOT_NOTICE
        if not _PLOT_NOTICE:  # one notice per process, not one per stage
            log.warning("matplotlib is not installed: the summaries come without a plot (pip install matplotlib).")
            _PLOT_NOTICE = True
        return False
    space = [Param.from_json(p) for p in summary["space"]]
    if not space:
        return False
    trials = summary["trials"]
    fig = Figure(figsize=(4.0 * len(space), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(space), squeeze=False)[0]
    stages = sorted({t.get("stage") or 0 for t in trials})
    accs = [t["val_acc"] for t in trials if is_finite_number(t.get("val_acc"))]
    floor = min(accs) if accs else 0.0
    for ax, p in zip(axes, space):
        def x_of(t):
            v = (t.get("params") or {}).get(p.name)
            if p.kind == "choice":
                return p.choices.index(v) if v in p.choices else None
            return v if is_finite_number(v) else None

        for s in stages:
            pts = [(x_of(t), t["val_acc"]) for t in trials if (t.get("stage") or 0) == s
                   and is_finite_number(t.get("val_acc")) and x_of(t) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, s=18, alpha=0.8, label=f"stage {s}" if s else "trials")
        bad = [x_of(t) for t in trials if t.get("status") in BAD and x_of(t) is not None
               and not is_finite_number(t.get("val_acc"))]
        if bad:
            ax.scatter(bad, [floor] * len(bad), marker="x", color="red", label="failed/diverged")
        if p.kind == "choice":
            ax.set_xticks(range(len(p.choices)), p.choices, rotation=30, fontsize=8)
        else:
            if p.log:
                ax.set_xscale("log")
            for edge in (p.low, p.high):
                ax.axvline(edge, color="grey", linestyle=":", linewidth=0.8)
        best = summary.get("best")
        if best is not None and x_of(best) is not None:
            ax.scatter([x_of(best)], [best["val_acc"]], marker="*", s=140, color="gold", edgecolor="black",
                       zorder=3, label="best")
        ax.set_xlabel(p.name + (" (log)" if p.log else ""))
        ax.set_ylabel("best validation accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure_atomic(fig, path)
    return True


def write_summary(sweep_dir, stage: int | None = None, with_plot: bool = True) -> dict:
    """Write <name>.md, <name>.json and <name>.png (when matplotlib is there) into the sweep folder: name
    stage<S>_summary for one stage, search_summary for the whole sweep. Returns the summary dict; its key
    "files" lists the names of the files written."""
    sweep = load_sweep(sweep_dir)
    summary = summarize(sweep, stage)
    name = f"stage{stage}_summary" if stage is not None else FINAL_NAME
    folder = pathlib.Path(sweep_dir)
    write_text_atomic(folder / f"{name}.md", render_markdown(summary))
    write_json_atomic(folder / f"{name}.json", summary)
    files = [f"{name}.md", f"{name}.json"]
    if with_plot and plot(summary, folder / f"{name}.png"):
        files.append(f"{name}.png")
    return {**summary, "files": files}
