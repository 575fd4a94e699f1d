"""Distillation (notes 6.6): the soft-target kernel against NumPy and a numerical gradient, its limits (alpha = 1
is the softmax loss bit for bit, zero loss when the student matches, Hinton's high-temperature limit that the T^2
factor keeps on scale), the fused MLP kernel's gradient, every registered model as a student learning from soft
targets alone, and the end-to-end comparison with a hard-label baseline."""
from __future__ import annotations

import numpy as np
import pytest

import framework
from framework.kernels import dense as K
from framework.ensemble.distill import DistillConfig, DistillError, SoftTargetModel, distill, student_config, train_student
from framework.components.model import Model

from conftest import FAST, compose_config


def numpy_distill(s, y, q, T, alpha):
    """Reference loss (mean over rows) and its gradient in plain NumPy."""
    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    n = len(s)
    lp, lpt = log_softmax(s), log_softmax(s / T)
    kl = np.sum(np.where(q > 0, q * (np.log(np.where(q > 0, q, 1)) - lpt), 0.0), axis=1)
    loss = np.mean(alpha * -lp[np.arange(n), y] + (1 - alpha) * T * T * kl)
    onehot = np.eye(s.shape[1])[y]
    grad = (alpha * (np.exp(lp) - onehot) + (1 - alpha) * T * (np.exp(lpt) - q)) / n
    return loss, grad


def numerical_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in range(x.size):
        old = x.flat[i]
        x.flat[i] = old + h
        fp = f()
        x.flat[i] = old - h
        fm = f()
        x.flat[i] = old
        g.flat[i] = (fp - fm) / (2 * h)
    return g


def soft_targets(rng, rows, c, T=1.0):
    z = rng.standard_normal((rows, c)) * 2
    e = np.exp(z / T - (z / T).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_soft_target_loss_matches_numpy_and_numerical_gradient(T, alpha):
    rng = np.random.default_rng(0)
    rows, n, c = 20, 6, 5
    idx = rng.choice(rows, n, replace=False).astype(np.int64)
    y = rng.integers(0, c, rows).astype(np.int64)
    q = soft_targets(rng, rows, c)
    q[0, 1] = 0.0  # a zero target probability: 0 * log 0 counts as 0
    q[0] /= q[0].sum()
    s = rng.standard_normal((n, c)) * 3
    ds = np.empty_like(s)
    loss = K.soft_target_loss(s, y, q, idx, T, alpha, ds)
    ref_loss, ref_grad = numpy_distill(s, y[idx], q[idx], T, alpha)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(ds, ref_grad, rtol=1e-10, atol=1e-15)
    scratch = np.empty_like(s)
    num = numerical_grad(lambda: K.soft_target_loss(s, y, q, idx, T, alpha, scratch), s)
    np.testing.assert_allclose(ds, num, rtol=1e-6, atol=1e-9)


def test_alpha_one_is_the_softmax_loss_bit_for_bit():
    rng = np.random.default_rng(1)
    s = rng.standard_normal((8, 4)) * 2
    y = rng.integers(0, 4, 8).astype(np.int64)
    a, b = np.empty_like(s), np.empty_like(s)
    hard = K.softmax_loss(s, y, a)
    soft = K.soft_target_loss(s, y, soft_targets(rng, 8, 4), np.arange(8, dtype=np.int64), 3.0, 1.0, b)
    assert hard == soft and np.array_equal(a, b)


def test_soft_term_vanishes_when_the_student_matches_the_teacher():
    rng = np.random.default_rng(2)
    T = 2.5
    s = rng.standard_normal((10, 6))
    q = np.exp(s / T) / np.exp(s / T).sum(axis=1, keepdims=True)
    ds = np.empty_like(s)
    loss = K.soft_target_loss(s, np.zeros(10, dtype=np.int64), q, np.arange(10, dtype=np.int64), T, 0.0, ds)
    assert abs(loss) < 1e-12 and np.abs(ds).max() < 1e-15


def test_t_squared_keeps_the_soft_gradient_on_scale_at_high_temperature():
    # Hinton et al.: for large T the soft gradient tends to ((s - mean s) - (v - mean v)) / (C N), v the
    # teacher's logits; without the T^2 factor it would be T^2 = 2500 times smaller.
    rng = np.random.default_rng(3)
    n, c, T = 16, 10, 50.0
    s, v = rng.standard_normal((n, c)), rng.standard_normal((n, c))
    q = np.exp(v / T) / np.exp(v / T).sum(axis=1, keepdims=True)
    ds = np.empty_like(s)
    K.soft_target_loss(s, np.zeros(n, dtype=np.int64), q, np.arange(n, dtype=np.int64), T, 0.0, ds)
    limit = ((s - s.mean(axis=1, keepdims=True)) - (v - v.mean(axis=1, keepdims=True))) / (c * n)
    np.testing.assert_allclose(ds, limit, rtol=0.1, atol=0.05 * np.abs(limit).max())


@pytest.mark.parametrize("keep_prob", [1.0, 0.7])
def test_mlp_distill_gradient_matches_numerical(keep_prob):
    rng = np.random.default_rng(4)
    model = framework.MODELS.build("mlp", hidden_sizes=[7, 5], activation="tanh", keep_prob=keep_prob).setup(6, 4)
    X = rng.standard_normal((30, 6))
    y = rng.integers(0, 4, 30).astype(np.int64)
    q = soft_targets(rng, 30, 4)
    idx = rng.choice(30, 9, replace=False).astype(np.int64)
    theta = model.init_params(rng)
    noise = model.sample_noise(rng, idx.size)
    noise = None if noise is None else noise.copy()  # the model reuses its scratch for the next draw
    grad = np.empty_like(theta)
    model.distill_loss_grad(theta, grad, X, y, q, idx, 3.0, 0.4, noise)
    scratch = np.empty_like(theta)
    num = numerical_grad(lambda: model.distill_loss_grad(theta, scratch, X, y, q, idx, 3.0, 0.4, noise), theta)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-9)
    # alpha = 1 through the fused kernel equals the model's own softmax loss and gradient
    hard, g1, g2 = np.empty_like(theta), np.empty_like(theta), np.empty_like(theta)
    assert model.distill_loss_grad(theta, g1, X, y, q, idx, 3.0, 1.0, noise) == model.loss_grad(theta, g2, X, y,
                                                                                                 idx, noise)
    assert np.array_equal(g1, g2)


def test_a_model_without_distill_loss_grad_is_a_clear_error():
    class Plain(Model):
        pass

    plain = Plain(None).setup(4, 3)
    with pytest.raises(DistillError, match="no method distill_loss_grad"):
        SoftTargetModel(plain, np.full((5, 3), 1 / 3), 2.0, 0.5)


def test_student_config_merges_or_replaces_the_model():
    ref = compose_config(*[o for o in FAST if "checkpoint" not in o], "model.activation=tanh", "lr=3e-3")
    cfg = student_config(ref, DistillConfig(model={"hidden_sizes": [16]}, epochs=3, seed=9))
    assert cfg.model.hidden_sizes == [16] and cfg.model.activation == "tanh"
    assert (cfg.epochs, cfg.seed, cfg.lr, cfg.checkpoint.every, cfg.resume) == (3, 9, 3e-3, 0, None)
    cfg = student_config(ref, DistillConfig(model={"name": "softmax"}, lr=0.01))
    assert dict(cfg.model) == {"name": "softmax"} and cfg.lr == 0.01


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 3-seed ensemble of digits MLPs (the default one at lr 1e-2, 8 epochs) and the shared split."""
    from framework.ensemble.members import Context
    from framework.ensemble.sources import resolve_sources
    from framework.ensemble.strategies import Seeds
    from framework.ensemble.timing import TimingConfig

    root = tmp_path_factory.mktemp("teachers")
    train = [o for o in FAST if "checkpoint" not in o] + ["epochs=8", "lr=1e-2"]
    for s in range(3):
        framework.train(compose_config(*train, f"seed={s}"), run_dir=root / f"{s}")
    runs, _ = resolve_sources([str(root)])
    ctx = Context(runs, timing=TimingConfig(repeats=0))
    (b,) = Seeds(None).build(ctx)
    return b.ensemble, ctx.splits, ctx.reference.cfg


@pytest.mark.parametrize("model", framework.MODELS.names())
def test_every_registered_model_learns_from_soft_targets_alone(teacher, tmp_path, model):
    """alpha = 0 with scrambled training labels: all the student can learn comes from the teacher."""
    import dataclasses

    ens, splits, ref = teacher
    scrambled = dataclasses.replace(splits, y_train=np.random.default_rng(0).permutation(splits.y_train))
    cfg = student_config(ref, DistillConfig(model={"name": model}, epochs=4))
    soft = ens.model.proba(ens.params, splits.X_train, 2.0)
    run = train_student(cfg, scrambled, tmp_path, soft, T=2.0, alpha=0.0)
    teacher_test = np.argmax(ens.model.scores(ens.params, splits.X_test), axis=1)
    student_test = np.argmax(run.model.scores(run.best_theta, splits.X_test), axis=1)
    assert np.mean(student_test == teacher_test) > 0.85
    assert run.summary["metrics"]["test_acc"] > 0.85  # chance is 0.1; its labels were noise
    assert framework.load(tmp_path / "checkpoints" / "best.h5").model_name == model


def test_distilled_student_beats_the_same_student_on_hard_labels(teacher, tmp_path):
    """Same architecture, seed (not a member's) and epochs: the soft targets give the better and more faithful
    student (notes 6.6)."""
    ens, splits, ref = teacher
    opts = DistillConfig(enabled=True, epochs=8, temperature=4.0, alpha=0.5, seed=100)
    result = distill(ens, splits, ref, opts, tmp_path)
    student, baseline = result["students"]
    assert student["name"] == "student (distilled)" and baseline["name"] == "student (hard labels)"
    assert student["params"] == baseline["params"] == ens.params.size // 3
    assert student["test_acc"] > baseline["test_acc"]
    assert student["agreement"] > baseline["agreement"]
    assert (tmp_path / "student" / "summary.json").is_file() and (tmp_path / "baseline" / "summary.json").is_file()
