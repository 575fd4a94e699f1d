"""The framework's Hydra Sweeper: random (or grid, or Optuna TPE) search in stages, coarse to fine (notes 5.4-5.8).

    python -m framework -m hydra/sweeper=framework_random 'lr=tag(log, interval(1e-6, 1e-1))' \
        'reg=tag(log, interval(1e-7, 1e-1))' 'model.hidden_sizes=choice([50],[100],[200])' hydra.sweeper.n_trials=30
    python -m framework -m +search=coarse_to_fine          # the preset: three stages, documented in its YAML

Each stage samples its trials, hands them to Hydra's configured launcher in batches of `max_parallel`, records
every outcome (ok, diverged, failed: one bad trial never stops the sweep) in search.json, writes a stage summary,
then narrows every numeric range around the stage's top-k trials for the next stage. This module imports only
Hydra at start-up (Hydra imports every hydra_plugins module to discover plugins); the search logic lives in
framework.search.
"""
from __future__ import annotations

import logging
import os
import pathlib
import sys
import time
from typing import Any, List, Optional, Sequence

from hydra.core.utils import JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .config import FrameworkSweeperConf  # noqa: F401  (registers hydra/sweeper=framework_random)

log = logging.getLogger(__name__)

# Thread pools read these once, when the library loads, which in a job happens before Hydra applies
# hydra.job.env_set; exporting them from the sweeper lets spawned workers (joblib/loky, submitit, SLURM with
# --export=ALL) start with them. Two cores and two parallel jobs: one BLAS and one Numba thread per job.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


class FrameworkSweeper(Sweeper):
    """Random/grid/TPE search with coarse-to-fine stages over Hydra's override grammar (see config.py)."""

    def __init__(self, n_trials: int = 20, seed: int = 0, max_parallel: int = 8, sampler: str = "random",
                 params: Optional[Any] = None, stages: Optional[Any] = None, top_k: int = 5,
                 margin: float = 0.25, min_width: float = 0.1, digits: int = 4, warmup: bool = True,
                 resume: bool = False) -> None:
        super().__init__()
        self.options = dict(n_trials=n_trials, seed=seed, max_parallel=max_parallel, sampler=sampler,
                            top_k=top_k, margin=margin, min_width=min_width, digits=digits, warmup=warmup,
                            resume=resume)
        self.params = _plain(params) or {}
        self.stages = _plain(stages) or []
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        """Run the search. A mistake in the search space or options prints one paragraph and exits non-zero
        before any trial runs."""
        from framework.core.errors import FrameworkError

        try:
            return self._sweep(arguments)
        except FrameworkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)

    # --- planning (everything here runs before the first trial) ---
    def _check_options(self) -> None:
        from framework.core.errors import ConfigError
        from framework.search.samplers import SAMPLERS

        o = self.options

        def need(key, ok, allowed):
            if not ok:
                raise ConfigError(f"hydra.sweeper.{key}", o.get(key), allowed)

        for key in ("n_trials", "max_parallel", "top_k"):
            need(key, isinstance(o[key], int) and o[key] >= 1, "an integer >= 1")
        need("seed", isinstance(o["seed"], int) and o["seed"] >= 0, "an integer >= 0")
        need("sampler", o["sampler"] in SAMPLERS,
             "one of the registered samplers: " + ", ".join(SAMPLERS.names()))
        need("margin", isinstance(o["margin"], (int, float)) and o["margin"] >= 0, "a number >= 0")
        need("min_width", isinstance(o["min_width"], (int, float)) and 0 < o["min_width"] <= 1,
             "a fraction in (0, 1]")
        need("digits", isinstance(o["digits"], int) and 2 <= o["digits"] <= 17, "an integer in [2, 17]")

    def _parse(self, arguments: List[str]):
        """(space, fixed overrides, stages) from hydra.sweeper.params, the command line and hydra.sweeper.stages."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from framework.core.errors import ConfigError
        from framework.search.errors import SearchError
        from framework.search.space import space_from_overrides

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)

        def parse(texts, where):
            try:
                return parser.parse_overrides(list(texts))
            except HydraException as exc:
                raise SearchError(f"Cannot parse {where}: {exc}") from None

        merged = {}  # by config key: a command-line argument replaces the same key of hydra.sweeper.params
        for o in parse([f"{k}={v}" for k, v in self.params.items()], "hydra.sweeper.params"):
            merged[o.key_or_group] = o
        for o in parse(arguments, "the command line"):
            merged.pop(o.key_or_group, None)
            merged[o.key_or_group] = o
        space, fixed = space_from_overrides(list(merged.values()), self.options["digits"])
        if not space:
            raise ConfigError("hydra.sweeper.params", self.params or None,
                              "at least one searched parameter, e.g. 'lr=tag(log, interval(1e-6, 1e-1))', "
                              "'reg=interval(0, 1e-2)', 'model.hidden_sizes=choice([50],[100])' or "
                              "'batch_size=range(16, 129, 16)' (on the command line or in hydra.sweeper.params)")
        searched = {p.name for p in space}
        stages = []
        plan = self.stages or [{"n_trials": self.options["n_trials"], "overrides": []}]
        for i, s in enumerate(plan, 1):
            n, top_k = s.get("n_trials"), s.get("top_k") or self.options["top_k"]
            if not isinstance(n, int) or n < 1:
                raise ConfigError(f"hydra.sweeper.stages[{i - 1}].n_trials", n, "an integer >= 1")
            if not isinstance(top_k, int) or top_k < 1:
                raise ConfigError(f"hydra.sweeper.stages[{i - 1}].top_k", top_k, "an integer >= 1")
            overrides = []
            for o in parse(s.get("overrides") or [], f"the overrides of stage {i}"):
                if o.is_sweep_override() or o.key_or_group in searched:
                    raise ConfigError(f"hydra.sweeper.stages[{i - 1}].overrides", o.input_line,
                                      "fixed overrides such as epochs=5 of keys that are not searched")
                overrides.append((o.key_or_group, o.input_line))
            stages.append({"index": i, "n_trials": n, "top_k": top_k, "overrides": [t for _, t in overrides],
                           "_pairs": overrides})
        return space, fixed, stages

    @staticmethod
    def _job_overrides(fixed, stage, space, values) -> List[str]:
        merged = dict(fixed)
        merged.update(dict(stage["_pairs"]))  # a stage's own setting (e.g. epochs=1) wins over the command line
        for p in space:
            merged[p.name] = f"{p.key}={p.text(values[p.name])}"
        return list(merged.values())

    def _compose(self, overrides: Sequence[str]) -> DictConfig:
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    def _check_composition(self, space, fixed, stages) -> None:
        """Compose one configuration per stage and per choice option (cheap), so a misspelt key or group option
        stops the sweep before any trial runs instead of failing every trial."""
        from framework.search.errors import SearchError

        middle = {p.name: (p.snap(p.from_unit(0.5)) if p.numeric else p.choices[0]) for p in space}
        probes = [self._job_overrides(fixed, s, space, middle) for s in stages]
        for p in space:
            for choice in p.choices[1:]:
                probes.append(self._job_overrides(fixed, stages[0], space, {**middle, p.name: choice}))
        for overrides in probes:
            try:
                self._compose(overrides)
            except HydraException as exc:
                raise SearchError(f"A trial's configuration cannot be composed from {' '.join(overrides)}: {exc}")

    def _limits(self, overrides: Sequence[str], space) -> dict:
        """The allowed range of each numeric searched parameter, from the components a trial's config selects."""
        from framework.search.summary import param_limits

        try:
            cfg = self._compose(overrides)
            plain = {k: OmegaConf.to_container(v, resolve=False) if OmegaConf.is_config(v) else v
                     for k, v in cfg.items() if k != "hydra"}
            return param_limits(plain, [p.name for p in space if p.numeric])
        except Exception as exc:  # limits only refine the border warnings; never stop a sweep for them
            log.debug("no allowed ranges for the border warnings: %s", exc)
            return {}

    def _warm_up(self, overrides: Sequence[str]) -> None:
        from framework.search.warmup import warm_numba_cache

        if not self.options["warmup"] or type(self.launcher).__name__ == "BasicLauncher":
            return  # the basic launcher runs jobs one after another in this process: the first job compiles
        cfg = self._compose(overrides)
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        if not all(key in cfg for key in ("model", "data", "optimizer")):
            return  # not a framework training config (another Hydra app using this sweeper)
        seconds = warm_numba_cache(cfg)
        if seconds is not None:
            log.info(f"Numba cache warmed in {seconds:.1f} s (1 epoch on a few rows, dtype "
                     f"{cfg.get('dtype', 'float64')}); parallel jobs load the compiled kernels from disk.")

    def _export_thread_env(self) -> None:
        if type(self.launcher).__name__ == "BasicLauncher":
            return  # jobs run in this process, whose thread pools already exist
        env_set = self.config.hydra.job.get("env_set") or {}
        for name in THREAD_VARS:
            if name in env_set:
                os.environ[name] = str(env_set[name])

    # --- the search ---
    def _sweep(self, arguments: List[str]) -> Any:
        from framework.search.narrowing import narrow
        from framework.search.record import SearchRecord, settle
        from framework.search.samplers import make_sampler
        from framework.search.summary import best_trial, rank, write_summary

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        self._check_options()
        o = self.options
        space, fixed, stages = self._parse(arguments)
        sweep_dir = pathlib.Path(str(self.config.hydra.sweep.dir))
        self._check_composition(space, fixed, stages)
        # a sampler that cannot start (e.g. TPE without Optuna) is reported before any trial runs
        make_sampler(o["sampler"], space, o["seed"], 0, 1)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not o["resume"]:  # a resumed sweep keeps the command line it was started with
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        record = SearchRecord(sweep_dir, o["sampler"], o["seed"], space, [t for _, t in fixed],
                              [{k: v for k, v in s.items() if not k.startswith("_")} for s in stages])
        first = {p.name: (p.snap(p.from_unit(0.5)) if p.numeric else p.choices[0]) for p in space}
        record.set_limits(self._limits(self._job_overrides(fixed, stages[0], space, first), space))
        if o["resume"]:
            self._adopt(record, sweep_dir)
        record.save()
        log.info("Search space: " + "; ".join(f"{p.name} {p.describe()}" for p in space))
        self._warm_up(self._job_overrides(fixed, stages[0], space, first))
        self._export_thread_env()

        from framework.core.lifecycle import STOP

        job_idx, stage_space, previous = 0, space, None
        progress = _Progress(sum(s["n_trials"] for s in stages))
        for stage in stages:
            index = stage["index"]
            if previous is not None:
                ok = [t for t in record.trials(previous["index"]) if t["status"] == "ok" and t["value"] is not None]
                top = rank(ok)[:previous["top_k"]]  # the summary's order: accuracy, then lower val loss
                if not top:
                    log.warning(f"No trial of stage {previous['index']} finished ok: stage {index} keeps the ranges.")
                stage_space = narrow(space, [t["params"] for t in top], o["margin"], o["min_width"]) if top \
                    else stage_space
            sampler = make_sampler(o["sampler"], stage_space, o["seed"], index, stage["n_trials"])
            n = stage["n_trials"] if sampler.max_trials is None else min(stage["n_trials"], sampler.max_trials)
            if n < stage["n_trials"]:  # e.g. a grid: no fuller grid fits in n_trials
                log.info(f"The {o['sampler']} sampler offers {n} points within n_trials={stage['n_trials']}: the "
                         f"stage runs {n} trials.")
            stage["n_trials"] = record.stage(index)["n_trials"] = n
            record.start_stage(index, stage_space)
            log.info(f"Stage {index}/{len(stages)}: {n} trials"
                     + (f" with {' '.join(stage['overrides'])}" if stage["overrides"] else "")
                     + ("; ranges " + ", ".join(f"{p.name} [{p.low:.4g}, {p.high:.4g}]"
                                                for p in stage_space if p.numeric) if index > 1 else ""))
            done = 0
            progress.start_stage(index, n, sum(s["n_trials"] for s in stages))
            while done < n and not STOP.received:  # after a stop signal launch nothing more (framework.cli)
                count = min(o["max_parallel"], n - done)
                asked = [sampler.ask() for _ in range(count)]
                nums = list(range(job_idx, job_idx + count))
                if o["resume"] and all(num in record.by_num for num in nums):  # drawn before the sweep stopped
                    trials = [self._finish_recorded(record.by_num[num], values, sweep_dir)
                              for num, (_, values) in zip(nums, asked)]
                else:
                    batch = []
                    for i, (_, values) in enumerate(asked):
                        overrides = self._job_overrides(fixed, stage, space, values)
                        record.add_trial(job_idx + i, index, values, overrides)
                        batch.append(overrides)
                    record.save()
                    results, error = self._launch(batch, job_idx)
                    trials = [settle(record.by_num[job_idx + i], *_outcome(result, error, sweep_dir))
                              for i, result in enumerate(results)]
                for (handle, _), trial in zip(asked, trials):
                    if trial["dir"] and os.path.isabs(trial["dir"]):
                        trial["dir"] = os.path.relpath(trial["dir"], sweep_dir)
                    sampler.tell(handle, trial["value"])
                    progress.finished(trial)
                record.save()
                job_idx += count
                done += count
            record.finish_stage(index)
            record.save()
            summary = write_summary(sweep_dir, stage=index)
            _log_stage(summary, sweep_dir / summary["files"][0], last=index == len(stages))
            previous = stage
            if STOP.received:
                break
        record.finish()
        record.save()
        summary = write_summary(sweep_dir)
        best = best_trial(summary["trials"])
        for w in summary["warnings"]:
            log.warning(w["message"])
        if best is not None:
            log.info(f"Best validation accuracy {best['val_acc']:.4f}: trial {best['num']} ({best['dir']}) with "
                     + " ".join(best["overrides"]))
        others = ", ".join(f[len("search_summary"):] for f in summary["files"][1:])
        log.info(f"Search summary: {sweep_dir / summary['files'][0]} (and {others}); "
                 f"{record.data['wall_time_s']:.1f} s in all.")
        return record.trials()

    # --- resuming a stopped sweep in its folder (framework.search.resume.resume_sweep) ---
    def _adopt(self, record, sweep_dir: pathlib.Path) -> None:
        """Take over the trials of the stopped sweep's search.json; the search it describes must be this one."""
        from framework.search.errors import SearchError
        from framework.search.folder import SEARCH_FILE, read_json

        old = read_json(sweep_dir / SEARCH_FILE)
        if not isinstance(old, dict) or not isinstance(old.get("trials"), list):
            raise SearchError(f"hydra.sweeper.resume=true: {sweep_dir / SEARCH_FILE} is missing or unreadable; "
                              "there is no search to continue in that folder.")
        keys = ("sampler", "seed", "space", "fixed_overrides")
        changed = [k for k in keys if old.get(k) != record.data[k]]
        plan = [[(s.get("index"), s.get("top_k"), s.get("overrides")) for s in d.get("stages") or []]
                for d in (old, record.data)]
        if plan[0] != plan[1]:
            changed.append("stages")
        if changed:
            raise SearchError(f"hydra.sweeper.resume=true: the search in {sweep_dir} was started with another "
                              f"{', '.join(changed)}; a sweep continues only with the command line it was "
                              "started with (python -m framework resume=<sweep folder> reuses it).")
        record.data["trials"] = old["trials"]
        record.by_num = {int(t["num"]): t for t in old["trials"]}

    def _finish_recorded(self, trial: dict, values: dict, sweep_dir: pathlib.Path) -> dict:
        """A trial the stopped sweep had drawn: as it ended when it finished; else continued from its
        checkpoints/last.h5 exactly as `resume=<job folder>` does, or launched again under its number in its folder."""
        from framework.core.lifecycle import STOP
        from framework.search.errors import SearchError
        from framework.search.folder import FINISHED, job_dirs, read_job
        from framework.search.record import settle
        from framework.search.resume import continue_job

        if trial.get("params") != values:
            raise SearchError(f"hydra.sweeper.resume=true: trial {trial['num']} of {sweep_dir} has params "
                              f"{trial.get('params')}, but the seeded sampler draws {values} there: search.json "
                              "does not come from this search; it cannot be continued.")
        # a job killed with its sweep has a folder that search.json does not name yet
        folder = sweep_dir / trial["dir"] if trial.get("dir") else job_dirs(sweep_dir).get(trial["num"])
        ended = read_job(folder).get("status") if folder is not None and folder.is_dir() else None
        if (ended or trial.get("status")) in FINISHED or STOP.received:
            return trial
        if folder is not None and (folder / "checkpoints" / "last.h5").is_file():
            log.info(f"Trial {trial['num']}: continuing from {folder / 'checkpoints' / 'last.h5'}")
            code = continue_job(folder)
            settle(trial, folder, None, None if code == 0 else f"its resume exited with code {code}")
            trial["dir"] = os.path.relpath(folder, sweep_dir)
            return trial
        if folder is not None and ended:
            (folder / "summary.json").unlink()  # the stopped attempt's; the new one writes its own
        results, error = self._launch([trial["overrides"]], trial["num"])
        return settle(trial, *_outcome(results[0], error, sweep_dir))

    def _launch(self, batch, job_idx):
        """Launch one batch; a launcher that raises (e.g. a cluster job killed) loses this batch, not the sweep."""
        try:
            results = list(self.launcher.launch(batch, initial_job_idx=job_idx))
            return results + [None] * (len(batch) - len(results)), None
        except Exception as exc:
            log.error(f"The launcher failed on jobs {job_idx}..{job_idx + len(batch) - 1}: "
                      f"{type(exc).__name__}: {exc}. They are recorded as failed; the sweep goes on.")
            return [None] * len(batch), f"the launcher failed: {type(exc).__name__}: {exc}"


class _Progress:
    """One line per finished trial: the trial's outcome, trials done of all planned, the best so far and the
    current stage's ETA (from the mean time per trial of this stage: later stages train longer)."""

    def __init__(self, total: int):
        self.total, self.done, self.best = total, 0, None
        self.stage = self.stage_n = self.stage_done = 0
        self.stage_start = time.monotonic()

    def start_stage(self, index: int, n: int, total: int) -> None:
        self.stage, self.stage_n, self.stage_done, self.total = index, n, 0, total  # a grid may shrink a stage
        self.stage_start = time.monotonic()

    def finished(self, trial: dict) -> None:
        from tqdm import tqdm

        self.done += 1
        self.stage_done += 1
        value = trial.get("val_acc")
        ok = trial.get("status") == "ok" and isinstance(value, (int, float)) and value == value
        if ok and (self.best is None or value > self.best[0]):
            self.best = (value, trial["num"])
        outcome = f"val acc {value:.4f}" if ok else trial.get("status")
        best = f"best {self.best[0]:.4f} (trial {self.best[1]})" if self.best else "no trial ok yet"
        elapsed = time.monotonic() - self.stage_start
        left = self.stage_n - self.stage_done
        eta = f"stage ETA {tqdm.format_interval(elapsed / self.stage_done * left)}" if left else "stage done"
        log.info(f"[{self.done}/{self.total} trials] trial {trial['num']} {outcome} | stage {self.stage}: "
                 f"{self.stage_done}/{self.stage_n} | {best} | {eta}")


def _plain(node):
    """Plain dicts/lists from the DictConfig/ListConfig values Hydra instantiates the sweeper with."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _outcome(result, launch_error, sweep_dir: pathlib.Path):
    """(job folder, returned value, error text) of one JobReturn, never raising for a failed job (JobReturn's
    return_value property re-raises the job's exception; _return_value holds it)."""
    if result is None:
        return None, None, launch_error or "the launcher returned no result for this job"
    folder = None
    try:
        folder = pathlib.Path(str(result.hydra_cfg.hydra.runtime.output_dir))
    except Exception:
        pass
    if result.status == JobStatus.COMPLETED:
        return folder, result._return_value, None
    exc = result._return_value
    text = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else "the job failed"
    log.warning(f"Trial failed ({' '.join(result.overrides or [])}): {text}")
    return folder, None, text


def _log_stage(summary: dict, path: pathlib.Path, last: bool) -> None:
    counts = ", ".join(f"{v} {k}" for k, v in summary["counts"].items())
    best = summary["best"]
    text = f"best val acc {best['val_acc']:.4f} (trial {best['num']})" if best else "no trial finished ok"
    log.info(f"Stage {summary['stage']} done: {counts}; {text}. Summary: {path}")
    if not last:  # the last stage's warnings come with the final summary
        for w in summary["warnings"]:
            log.warning(w["message"])
