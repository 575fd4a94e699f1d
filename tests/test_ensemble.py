"""Ensembles (notes 6): seed ensembles reach the best member, greedy soups never lose validation accuracy, the
combine rules against NumPy, snapshot selection at the ends of cosine cycles, EMA against the training loop's own
evaluation, clear errors for members of other data/classes/architectures (also through the CLI), and ensemble
files that round-trip bit for bit through framework.load and score through framework.evaluate."""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import framework
from framework.components.schedule import cycle_end_epochs
from framework.ensemble.combine import COMBINES, CombineRule, combine_proba
from framework.ensemble.errors import NotApplicable
from framework.ensemble.fileformat import save_ensemble
from framework.ensemble.job import build_ensembles
from framework.ensemble.members import Context
from framework.ensemble.predictor import Ensemble
from framework.ensemble.report import ensemble_row
from framework.ensemble.sources import resolve_sources
from framework.ensemble.strategies import (EMA, STRATEGIES, Built, Seeds, Snapshots, SnapshotsConfig, Soup, SoupConfig,
                                           TopK, TopkConfig)
from framework.ensemble.timing import TimingConfig
from framework.cli.app import CONF_DIR, register_configs
from framework.core.errors import DataError, FrameworkError

from conftest import FAST, compose_config

# The default digits MLP at lr 1e-2 for 8 epochs (members that still differ: the regime where seed ensembles
# gain on digits), every epoch checkpointed (snapshots), EMA on (the default 0.99).
TRAIN = [o for o in FAST if "checkpoint" not in o] + ["lr=1e-2", "epochs=8", "checkpoint.every=1"]
NO_TIMING = ["timing.repeats=0", "plot=false", "tensorboard=false"]


def train_run(folder: pathlib.Path, *overrides) -> dict:
    return framework.train(compose_config(*TRAIN, *overrides), run_dir=folder)


def ensemble_config(sources, *overrides):
    """conf/ensemble.yaml composed with overrides, as `python -m framework.ensemble` would see it."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="ensemble", overrides=list(overrides))
    cfg.source = [str(s) for s in sources]
    return cfg


def context(*sources, weights="best"):
    runs, _ = resolve_sources([str(s) for s in sources])
    return Context(runs, weights, timing=TimingConfig(repeats=0))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """A folder of 5 runs that differ only in seed, like the sweep of conf/experiment/ensemble_seeds.yaml."""
    root = tmp_path_factory.mktemp("seeds")
    summaries = {s: train_run(root / f"{s}_seed{s}", f"seed={s}") for s in range(5)}
    return root, summaries


@pytest.fixture(scope="module")
def seed_report(seeds, tmp_path_factory):
    out = tmp_path_factory.mktemp("seed_report")
    return build_ensembles(ensemble_config([seeds[0]], "strategy=seeds", *NO_TIMING), out), out


def test_seed_ensemble_scores_at_least_the_best_member(seeds, seed_report):
    root, summaries = seeds
    report, _ = seed_report
    (ens,) = report["ensembles"]
    members = {m["label"]: m for m in report["members"]}
    assert len(members) == 5
    # every member is scored on its own run's split: the numbers its training run reported
    for s, summary in summaries.items():
        m = members[f"{s}_seed{s}"]
        assert m["test_acc"] == pytest.approx(summary["metrics"]["test_acc"], abs=1e-12)
        assert m["val_acc"] == pytest.approx(summary["metrics"]["best_val_acc"], abs=1e-12)
    # the single model one would deploy without an ensemble: the member with the best validation accuracy
    picked = max(members.values(), key=lambda m: m["val_acc"])
    assert ens["picked_member"] == picked["label"]
    assert ens["test_gain"] == pytest.approx(ens["test_acc"] - picked["test_acc"], abs=1e-15)
    assert ens["test_gain"] > 0
    assert ens["test_acc"] > np.mean([m["test_acc"] for m in members.values()])
    assert ens["test_gain_oracle"] == pytest.approx(ens["test_acc"] - max(m["test_acc"] for m in members.values()))


def numpy_combine(scores, rule, T):
    """Reference: the rules written out with plain NumPy."""
    def softmax(s):
        e = np.exp(s / T - (s / T).max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    if rule == "mean_logits":
        return softmax(np.mean(scores, axis=0))
    probs = np.mean([softmax(s) for s in scores], axis=0)
    if rule == "vote":
        votes = sum(np.eye(scores[0].shape[1])[np.argmax(s, axis=1)] for s in scores)
        return (votes + probs) / (len(scores) + 1)
    return probs


@pytest.mark.parametrize("rule", COMBINES.names())
@pytest.mark.parametrize("T", [1.0, 3.0])
def test_combine_rules_match_numpy(rule, T):
    rng = np.random.default_rng(1)
    scores = [rng.standard_normal((40, 7)) * 3 for _ in range(5)]
    out = combine_proba(scores, rule, T)
    np.testing.assert_allclose(out, numpy_combine(scores, rule, T), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-12)


def test_vote_is_the_majority_and_ties_go_to_the_higher_mean_probability():
    # members' classes for row 0: 2, 2, 1 -> 2 by majority although member 3 is very sure of class 1;
    # row 1: classes 0, 1 (a tie) -> the class with the higher mean probability (1)
    s1 = np.array([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])
    s2 = np.array([[0.0, 0.0, 1.0], [0.0, 9.0, 0.0]])
    s3 = np.array([[0.0, 20.0, 0.0], [0.0, 9.0, 0.0]])
    assert combine_proba([s1, s2, s3], "vote").argmax(axis=1).tolist() == [2, 1]
    assert combine_proba([s1, s2, s3], "mean_prob").argmax(axis=1).tolist() == [1, 1]



# --- the registries of strategies and combine rules ---------------------------------------------------------------
@pytest.mark.parametrize("registry", [STRATEGIES, COMBINES], ids=lambda r: r.kind)
def test_every_strategy_and_combine_rule_documents_itself_and_its_options(registry):
    assert registry.names()
    for name in registry.names():
        entry = registry.get(name)
        assert entry.description, f"{registry.kind} {name} has no docstring"
        for f in dataclasses.fields(entry.config_cls):
            assert f.metadata.get("help"), f"{registry.kind} {name}: field {f.name} lacks help text"


def test_framework_list_shows_the_strategies_and_combine_rules(cli):
    run = cli("kind=[strategy,combine]", "options=true", module="framework.list")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "strategy (select with python -m framework.ensemble strategy=NAME):"
    assert "combine (select with python -m framework.ensemble combine=NAME):" in lines
    for registry in (STRATEGIES, COMBINES):
        for name in registry.names():
            assert re.search(rf"^  {name} +{re.escape(registry.get(name).description)}$", run.stdout, re.M), name
    k_line = "      k = 5: how many of the runs with the best validation accuracy to combine (a value in [2, inf))"
    assert k_line in lines
    everything = cli(module="framework.list")
    assert everything.returncode == 0, everything.stderr
    headers = [line.split(" (")[0] for line in everything.stdout.splitlines() if not line.startswith(" ")]
    assert headers == ["optimizer", "schedule", "regularizer", "model", "data", "layer", "strategy", "combine",
                       "hydra.sweeper.sampler", "diagnostics"]
    assert "optimizer (select with optimizer=NAME):" in everything.stdout  # training groups as before


class MaxProb(CombineRule):
    """Per class the highest probability any member gives it, renormalized (a combine rule plugin of the tests)."""

    def proba(self, stack, T=1.0):
        e = np.exp(stack / T - (stack / T).max(axis=2, keepdims=True))
        top = (e / e.sum(axis=2, keepdims=True)).max(axis=0)
        return top / top.sum(axis=1, keepdims=True)


def test_a_combine_rule_plugin_registers_with_the_decorator_and_runs_end_to_end(seeds, monkeypatch, tmp_path):
    from sklearn.datasets import load_digits

    monkeypatch.setattr(COMBINES, "_entries", dict(COMBINES._entries))  # the plugin leaves with the test
    COMBINES.register("max_prob")(MaxProb)
    report = build_ensembles(ensemble_config([seeds[0]], "strategy=seeds", "combine=max_prob", *NO_TIMING), tmp_path)
    (row,) = report["ensembles"]
    assert row["combine"] == "max_prob"
    ens = framework.load(row["file"])
    X = load_digits().data[:200]
    members = np.stack(ens.member_proba(X))  # (M, N, C): each member's own softmax
    expected = members.max(axis=0) / members.max(axis=0).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ens.predict_proba(X), expected, rtol=1e-12)
    np.testing.assert_allclose(np.exp(ens.scores(X)), expected, rtol=1e-12)  # scores: log of the probabilities
    assert np.array_equal(ens.predict(X), expected.argmax(axis=1))
    with pytest.raises(FrameworkError, match=r"'combine'.*max_prob, mean_logits, mean_prob, vote"):
        combine_proba([np.zeros((2, 3))], "median")

@pytest.fixture(scope="module")
def built(seeds):
    """Every strategy on the seed runs (soup on snapshots of one run: one initialization)."""
    ctx = context(seeds[0])
    out = {}
    (seeds_built,) = Seeds(None).build(ctx)
    for combine in COMBINES.names():
        b = seeds_built if combine == ctx.combine else Built(
            ctx.ensemble(f"seeds_{combine}", "seeds", seeds_built.members, combine), seeds_built.members)
        out[b.ensemble.name] = b
    for b in (Snapshots(SnapshotsConfig(select="last", k=4)).build(ctx) + EMA(None).build(ctx)
              + Soup(SoupConfig(pool="snapshots")).build(ctx)):
        out[b.ensemble.name] = b
    return ctx, out


def test_every_strategy_builds(built):
    assert sorted(built[1]) == ["ema", "seeds", "seeds_mean_logits", "seeds_vote", "snapshots", "soup_greedy",
                                "soup_uniform"]


def test_ensemble_file_round_trips_bit_for_bit(built, tmp_path):
    from sklearn.datasets import load_digits

    from framework.io.evaluate import evaluate

    ctx, ensembles = built
    X = load_digits().data[:300]  # raw pixels 0..16: load() applies the preprocessing
    for name, b in ensembles.items():
        ens = b.ensemble
        path = save_ensemble(ens, tmp_path / f"{name}.h5")
        loaded = framework.load(path)
        assert isinstance(loaded, Ensemble) and loaded.labels == ens.labels
        assert np.array_equal(loaded.params, ens.params) and loaded.params.dtype == ens.params.dtype
        for method in ("predict_proba", "scores", "predict"):
            assert np.array_equal(getattr(loaded, method)(X), getattr(ens, method)(X)), (name, method)
        # the evaluate CLI's function scores the file on the split rebuilt from the saved data config
        row = ensemble_row(ctx, b)
        assert evaluate(path)["accuracy"] == row["test_acc"]
        assert evaluate(path, split="val")["accuracy"] == row["val_acc"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_greedy_soup_never_loses_validation_accuracy_and_ignores_test_labels(seeds):
    ctx = context(seeds[0])
    greedy = Soup(SoupConfig(pool="snapshots", methods=["greedy"]))
    (b,) = greedy.build(ctx)
    row = ensemble_row(ctx, b)
    assert row["val_acc"] >= max(m.val_acc for m in b.members)
    # scrambled test labels change nothing that was chosen
    ctx2 = context(seeds[0])
    ctx2.splits.y_test[:] = np.random.default_rng(0).permutation(ctx2.splits.y_test)
    (b2,) = greedy.build(ctx2)
    assert [m.label for m in b2.averaged] == [m.label for m in b.averaged]
    assert np.array_equal(b2.ensemble.params, b.ensemble.params)


def test_top_k_chooses_by_validation_only(seeds):
    ctx = context(seeds[0])
    (b,) = TopK(TopkConfig(k=3)).build(ctx)
    vals = sorted((ctx.run_member(r).val_acc for r in ctx.runs), reverse=True)
    assert [m.val_acc for m in b.members] == vals[:3] and b.ensemble.name == "top3"


def test_ema_strategy_reproduces_the_training_loops_ema_score(seeds):
    root, _ = seeds
    ctx = context(root / "3_seed3")
    (b,) = EMA(None).build(ctx)
    history = framework.load(root / "3_seed3" / "checkpoints" / "last.h5").history
    row = ensemble_row(ctx, b)
    assert row["val_acc"] == history["val/ema_acc"][-1]
    assert b.members[0].val_acc == history["val/acc"][-1]


@pytest.mark.parametrize("unit", ["epoch", "iteration"])
def test_cycle_ends_of_cosine_warm_restarts(unit):
    steps = 7  # steps per epoch
    period = 3 if unit == "epoch" else 3 * steps
    cfg = OmegaConf.create({"lr": 0.1, "schedule": {"name": "cosine", "unit": unit, "period": period,
                                                    "restart": True, "min_factor": 0.0}})
    assert cycle_end_epochs(cfg, steps, 10) == [3, 6, 9]
    cfg.schedule.restart = False
    assert cycle_end_epochs(cfg, steps, 10) == []
    cfg = OmegaConf.create({"lr": 0.1, "schedule": {"name": "constant", "unit": unit, "warmup": 2}})
    assert cycle_end_epochs(cfg, steps, 10) == []  # the warm-up's rise is no restart


def test_snapshots_take_the_ends_of_the_cosine_cycles(tmp_path):
    train_run(tmp_path / "cosine", "epochs=6", "schedule=cosine", "schedule.period=2", "schedule.restart=true")
    ctx = context(tmp_path / "cosine")
    (b,) = Snapshots(SnapshotsConfig()).build(ctx)
    assert [m.label for m in b.members] == ["cosine:epoch002", "cosine:epoch004", "cosine:epoch006"]
    assert b.note.startswith("cycles")


def test_seeds_strategy_names_the_keys_that_differ(seeds, tmp_path):
    train_run(tmp_path / "other_lr", "seed=7", "lr=3e-3")
    ctx = context(seeds[0] / "0_seed0", tmp_path / "other_lr")
    with pytest.raises(NotApplicable, match=r"differ only in `seed`.*lr=0\.003 where 0_seed0 has 0\.01"):
        Seeds(None).build(ctx)


@pytest.fixture(scope="module")
def odd_runs(tmp_path_factory):
    """Runs that cannot join the digits runs: other split, other dataset/classes, other architecture."""
    root = tmp_path_factory.mktemp("odd")
    quick = ["epochs=2", "checkpoint.every=0"]
    train_run(root / "digits", *quick)
    train_run(root / "split1", *quick, "data.split_seed=1")
    train_run(root / "spiral3", *quick, "data=spiral")
    train_run(root / "spiral4", *quick, "data=spiral", "data.classes=4")
    train_run(root / "narrow", *quick, "model.hidden_sizes=[16]")
    return root


@pytest.mark.parametrize("a,b,message", [
    ("digits", "split1", r"data\.split_seed=1"),
    ("digits", "spiral3", r"data\.name='spiral'"),
    ("spiral3", "spiral4", r"data\.classes=4"),
])
def test_members_of_other_data_or_classes_are_refused(odd_runs, a, b, message):
    with pytest.raises(DataError, match=message):
        build_ensembles(ensemble_config([odd_runs / a, odd_runs / b], "strategy=topk", *NO_TIMING),
                          odd_runs / "out")


def test_weights_of_different_architectures_do_not_average(odd_runs):
    ctx = context(odd_runs / "digits", odd_runs / "narrow")
    with pytest.raises(NotApplicable, match=r"different architectures.*model\.hidden_sizes"):
        Soup(SoupConfig(pool="runs")).build(ctx)
    (b,) = TopK(TopkConfig(k=2)).build(ctx)  # their predictions still combine
    assert len(b.ensemble.parts) == 2


def test_options_are_validated(seeds, tmp_path):
    for overrides, key in ((["strategy=bagging"], "strategy"), (["combine=median"], "combine"),
                           (["topk.k=1"], "topk.k"), (["snapshots.select=first"], "snapshots.select"),
                           (["distill.alpha=2"], "distill.alpha")):
        with pytest.raises(FrameworkError, match=rf"'{key}'"):
            build_ensembles(ensemble_config([seeds[0]], *overrides, *NO_TIMING), tmp_path)
    with pytest.raises(FrameworkError, match="source"):
        build_ensembles(ensemble_config([], *NO_TIMING), tmp_path)


def test_latest_names_the_newest_date_time_folder(tmp_path):
    for stamp in ("2025-01-02/09-00-00", "2025-01-01/23-00-00"):
        (tmp_path / "sweeps" / stamp / "0_seed=0" / "checkpoints").mkdir(parents=True)
        (tmp_path / "sweeps" / stamp / "0_seed=0" / "summary.json").write_text('{"status": "ok"}')
    runs, _ = resolve_sources([str(tmp_path / "sweeps" / "latest")])
    assert [r.folder.parent.name for r in runs] == ["09-00-00"]


def test_cli_reports_saves_and_evaluates(seeds, cli, tmp_path):
    run = cli(f"source=[{seeds[0]}]", "strategy=all", "timing.repeats=1", "timing.min_seconds=0.002",
              "distill.enabled=true", "distill.epochs=2", "distill.baseline=false", module="framework.ensemble")
    assert run.returncode == 0, run.stderr[-3000:]
    (out,) = tmp_path.glob("outputs/ensembles/*/*")
    report = json.loads((out / "report.json").read_text())
    names = [e["name"] for e in report["ensembles"]]
    assert names == ["seeds", "top5", "snapshots", "ema", "soup_uniform", "soup_greedy"]
    assert "| seeds | 5 | mean_prob |" in (out / "report.md").read_text() and "## Members" in run.stdout
    assert all(math.isfinite(e["cost"]) and e["cost"] > 0 for e in report["ensembles"])
    assert [r["name"] for r in report["distill"]["rows"]][2:] == ["student (distilled)"]
    assert list(out.glob("events.out.tfevents.*")) and (out / "distill" / "student" / "summary.json").is_file()
    if _has_matplotlib():
        assert (out / "report.png").stat().st_size > 1000
    seeds_row = report["ensembles"][0]
    scored = cli(f"checkpoint={seeds_row['file']}", "json=true", module="framework.evaluate")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["accuracy"] == seeds_row["test_acc"]


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_cli_error_for_members_of_other_data_is_one_paragraph(odd_runs, cli):
    run = cli(f"source=[{odd_runs / 'digits'},{odd_runs / 'spiral3'}]", "strategy=seeds",
              module="framework.ensemble")
    assert run.returncode == 2
    assert run.stderr.startswith("error: Member spiral3 cannot join an ensemble with digits")
    assert "Traceback" not in run.stderr + run.stdout
