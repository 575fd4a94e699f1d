"""Soups of models with batchnorm: the averaged weights get running statistics measured again (training-mode
passes over training rows, a cumulative average of the batch statistics), not the average of the members'."""
from __future__ import annotations

import numpy as np
import pytest

import framework
from framework import MODELS
from framework.ensemble.batchnorm import RECOMPUTE_ROWS, recompute_batchnorm
from framework.ensemble.fileformat import save_ensemble
from framework.ensemble.members import Context
from framework.ensemble.report import ensemble_row
from framework.ensemble.sources import resolve_sources
from framework.ensemble.strategies import Soup, SoupConfig, average_weights
from framework.ensemble.timing import TimingConfig

from conftest import FAST_BASE, compose_config

# two batchnorm layers: the second one's input depends on the first one normalizing by its batch's statistics
LAYERS = ("model.layers=[{type:affine,units:16},batchnorm,relu,{type:affine,units:12},batchnorm,relu,"
          "{type:affine}]")
BATCH = 32
EPS = 1e-5  # the batchnorm layers' default eps


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A batchnorm MLP on digits (flat rows: the affine layers need no shape) trained from one initialization
    (seed 0) at three learning rates: members a soup can average (model soups average fine-tuned runs of one
    initialization; runs of different seeds do not average into a good network, batchnorm or not)."""
    root = tmp_path_factory.mktemp("bn_runs")
    for i, lr in enumerate(("2e-3", "4e-3", "8e-3")):
        framework.train(compose_config(*FAST_BASE, "model=sequential", LAYERS, "epochs=4", f"lr={lr}",
                                       f"batch_size={BATCH}", "seed=0"), run_dir=root / f"{i}_lr{lr}")
    return root


def context(root):
    refs, _ = resolve_sources([str(root)])
    return Context(refs, "best", timing=TimingConfig(repeats=0))


def numpy_statistics(blocks: dict, X: np.ndarray) -> dict:
    """The running statistics a cumulative average over full batches of BATCH rows gives, computed with NumPy from
    the activations of the network in training mode (each batchnorm normalizes by its batch's mean and biased
    variance): {name: (C,)} for mean2, var2, mean4, var4 (blocks are numbered by layer with parameters)."""
    n = min(len(X), RECOMPUTE_ROWS) // BATCH
    sums = {k: 0.0 for k in ("mean2", "var2", "mean4", "var4")}
    for b in range(n):
        h = X[b * BATCH:(b + 1) * BATCH] @ blocks["W1"] + blocks["b1"]
        for k, nxt in ((2, 3), (4, None)):
            mu, var = h.mean(axis=0), h.var(axis=0)
            sums[f"mean{k}"] = sums[f"mean{k}"] + mu
            sums[f"var{k}"] = sums[f"var{k}"] + var
            if nxt:
                z = np.maximum(blocks[f"gamma{k}"] * (h - mu) / np.sqrt(var + EPS) + blocks[f"beta{k}"], 0.0)
                h = z @ blocks[f"W{nxt}"] + blocks[f"b{nxt}"]
    return {k: v / n for k, v in sums.items()}


def test_uniform_soup_recomputes_the_batchnorm_statistics(runs, tmp_path, capsys):
    ctx = context(runs)
    uniform, greedy = Soup(SoupConfig(pool="runs")).build(ctx)
    members = uniform.averaged
    model = members[0].ckpt.model
    soup = model.layout.views(uniform.ensemble.params)
    plain = model.layout.views(average_weights(members))
    expected = numpy_statistics(plain, ctx.splits.X_train)
    for name in model.layout.names:
        if name in expected:  # running statistics: measured again, and not the members' average
            np.testing.assert_allclose(soup[name], expected[name], rtol=1e-10, atol=1e-12)
            assert not np.allclose(soup[name], plain[name], rtol=1e-3), name
        else:  # weights: the plain average, bit for bit
            np.testing.assert_array_equal(soup[name], plain[name])
    assert "batchnorm statistics recomputed (2 layers" in uniform.note
    row = ensemble_row(ctx, uniform)
    plain_val = ctx.val_accuracy(model, average_weights(members))
    with capsys.disabled():
        print(f"\nbatchnorm soup of {len(members)} runs: val acc {row['val_acc']:.4f} (test {row['test_acc']:.4f}); "
              f"with the members' averaged statistics {plain_val:.4f}; members "
              f"{', '.join(f'{m.val_acc:.4f}' for m in members)}; greedy kept {len(greedy.averaged)}: "
              f"{ensemble_row(ctx, greedy)['val_acc']:.4f}")
    assert row["val_acc"] > 0.8  # chance is 0.1
    # the saved soup predicts with the recomputed statistics
    loaded = framework.load(save_ensemble(uniform.ensemble, tmp_path / "soup.h5"))
    np.testing.assert_array_equal(loaded.params, uniform.ensemble.params)


def test_greedy_soup_judges_candidates_with_recomputed_statistics(runs):
    ctx = context(runs)
    judged = []
    score = ctx.val_accuracy
    ctx.val_accuracy = lambda model, theta: judged.append(theta.copy()) or score(model, theta)
    (greedy,) = Soup(SoupConfig(pool="runs", methods=["greedy"])).build(ctx)
    model = greedy.members[0].ckpt.model
    assert len(judged) == 2  # the best member, then each other one as a candidate
    for theta in judged:  # each candidate carries the statistics of its own averaged weights
        again, _ = recompute_batchnorm(model, theta, ctx.splits.X_train, BATCH)
        np.testing.assert_allclose(again, theta, rtol=1e-12, atol=1e-14)
    if len(greedy.averaged) == 1:  # nothing averaged: the best member as it is, its own statistics
        assert np.array_equal(greedy.ensemble.params, greedy.averaged[0].theta)
        assert "recomputed" not in greedy.note
    else:
        expected, _ = recompute_batchnorm(model, average_weights(greedy.averaged), ctx.splits.X_train, BATCH)
        assert np.array_equal(greedy.ensemble.params, expected) and "recomputed" in greedy.note
    assert ensemble_row(ctx, greedy)["val_acc"] >= max(m.val_acc for m in greedy.members)


def test_models_without_batchnorm_are_left_alone():
    """An MLP (and a layer list without batchnorm) gets back the very same vector: soups of them stay bit for bit."""
    X = np.random.default_rng(0).standard_normal((100, 64))
    for model in (MODELS.build("mlp").setup(64, 10),
                  MODELS.build("sequential", layers=[{"type": "affine", "units": 8}, "relu", {"type": "affine"}])
                  .setup(64, 10)):
        theta = model.init_params(np.random.default_rng(1))
        same, done = recompute_batchnorm(model, theta, X, BATCH)
        assert same is theta and done is None


def test_recompute_is_deterministic_and_momentum_free(runs):
    """The same rows give the same numbers, and the result does not depend on the statistics it starts from."""
    ctx = context(runs)
    member = ctx.run_member(ctx.runs[0])
    model = member.ckpt.model
    a, done = recompute_batchnorm(model, member.theta, ctx.splits.X_train, BATCH)
    start = member.theta.copy()
    model.layout.view(start, "mean2")[:] = 100.0
    model.layout.view(start, "var4")[:] = 7.0
    b, _ = recompute_batchnorm(model, start, ctx.splits.X_train, BATCH)
    assert np.array_equal(a, b)
    assert done.rows == (min(len(ctx.splits.X_train), RECOMPUTE_ROWS) // BATCH) * BATCH
