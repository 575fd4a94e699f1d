"""Update rules (notes section 4): each first-order optimizer against an independent NumPy transcription of the
notes' formula, Nesterov's ahead form against the lookahead definition, Adam's bias correction by hand, the pure
`update` API, L-BFGS against a Newton-refined optimum, bad hyperparameters, and training on digits."""
import math

import numpy as np
import pytest

import framework
from framework import OPTIMIZERS
from framework.core.errors import ConfigError

from conftest import FAST, assert_clean_failure, compose_config

ALL = OPTIMIZERS.names()
FIRST_ORDER = [n for n in ALL if not OPTIMIZERS.build(n).full_batch]
FULL_BATCH = [n for n in ALL if OPTIMIZERS.build(n).full_batch]
WITH_MOMENTUM = [n for n in FIRST_ORDER if OPTIMIZERS.build(n).momentum_field]

# Non-default hyperparameters, so a rule that ignores its config (or swaps two fields) is caught.
OPTIONS = {"mu": 0.8, "decay": 0.95, "beta1": 0.85, "beta2": 0.99, "eps": 1e-6}


# --- plain NumPy transcriptions of the notes (4.1-4.8), one step each: (x, dx, slots, hp, t) -> x ---

def ref_sgd(x, dx, s, hp, t):
    return x + -hp["lr"] * dx


def ref_momentum(x, dx, s, hp, t):
    s["v"] = hp["mu"] * s["v"] - hp["lr"] * dx
    return x + s["v"]


def ref_nesterov(x, dx, s, hp, t):
    v_prev = s["v"].copy()
    s["v"] = hp["mu"] * s["v"] - hp["lr"] * dx
    return x + (-hp["mu"] * v_prev + (1 + hp["mu"]) * s["v"])


def ref_adagrad(x, dx, s, hp, t):
    s["cache"] = s["cache"] + dx ** 2
    return x + -hp["lr"] * dx / (np.sqrt(s["cache"]) + hp["eps"])


def ref_rmsprop(x, dx, s, hp, t):
    s["cache"] = hp["decay"] * s["cache"] + (1 - hp["decay"]) * dx ** 2
    return x + -hp["lr"] * dx / (np.sqrt(s["cache"]) + hp["eps"])


def ref_adam(x, dx, s, hp, t):
    b1, b2 = hp["beta1"], hp["beta2"]
    s["m"] = b1 * s["m"] + (1 - b1) * dx
    mt = s["m"] / (1 - b1 ** t)
    s["v"] = b2 * s["v"] + (1 - b2) * dx ** 2
    vt = s["v"] / (1 - b2 ** t)
    return x + -hp["lr"] * mt / (np.sqrt(vt) + hp["eps"])


REFERENCES = {"sgd": (ref_sgd, []), "momentum": (ref_momentum, ["v"]), "nesterov": (ref_nesterov, ["v"]),
              "adagrad": (ref_adagrad, ["cache"]), "rmsprop": (ref_rmsprop, ["cache"]),
              "adam": (ref_adam, ["m", "v"])}


# --- two test problems with NumPy gradients (float64) ---

def quadratic(P=20, seed=0):
    """f(x) = 0.5 x'Ax - b'x with A SPD (eigenvalues 0.5..2); returns (x0, grad)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((P, P)))
    A = Q @ np.diag(np.linspace(0.5, 2.0, P)) @ Q.T
    b = rng.standard_normal(P)
    return rng.standard_normal(P), lambda x: A @ x - b


def softmax_problem(N=40, D=5, C=3, reg=0.1, seed=1):
    """Mean cross-entropy of a linear softmax classifier, theta = [W (D, C) row-major, b (C,)], plus
    0.5 * reg * ||theta||^2 (biases included: strictly convex). Returns (theta0, loss_grad, hessian)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    y = rng.integers(0, C, N)
    Xa = np.hstack([X, np.ones((N, 1))])  # the bias is the last row of the augmented W (D+1, C)
    Y = np.eye(C)[y]

    def probs(theta):
        s = Xa @ theta.reshape(D + 1, C)
        s = s - s.max(axis=1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(axis=1, keepdims=True)

    def loss_grad(theta, grad=None):
        p = probs(theta)
        loss = -np.mean(np.log(p[np.arange(N), y])) + 0.5 * reg * theta @ theta
        g = (Xa.T @ (p - Y) / N).ravel() + reg * theta
        if grad is not None:
            grad[:] = g
        return loss, g

    def hessian(theta):
        p = probs(theta)
        H = np.zeros((theta.size, theta.size))
        for n in range(N):
            H += np.kron(np.outer(Xa[n], Xa[n]), np.diag(p[n]) - np.outer(p[n], p[n]))
        return H / N + reg * np.eye(theta.size)

    return 0.1 * rng.standard_normal((D + 1) * C), loss_grad, hessian


def build(name, **extra):
    fields = OPTIMIZERS.defaults(name)
    return OPTIMIZERS.build(name, **{**{k: v for k, v in OPTIONS.items() if k in fields}, **extra})


def relative_difference(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)


# --- conformance ---

@pytest.mark.parametrize("name", FIRST_ORDER)
@pytest.mark.parametrize("problem", ["quadratic", "softmax"])
def test_rule_matches_numpy_transcription_of_the_notes(name, problem):
    if name not in REFERENCES:
        pytest.fail(f"optimizer {name!r} has no NumPy reference in tests/test_optimizers.py: add one")
    step, slots = REFERENCES[name]
    lr = 0.05
    opt = build(name, lr=lr)
    hp = {"lr": lr, **{k: getattr(opt.cfg, k) for k in OPTIONS if hasattr(opt.cfg, k)}}
    if problem == "quadratic":
        x0, grad_of = quadratic()
    else:
        x0, loss_grad, _ = softmax_problem()
        grad_of = lambda x: loss_grad(x)[1]  # noqa: E731
    x_ref, ref_slots = x0.copy(), {k: np.zeros_like(x0) for k in slots}
    theta, state = x0.copy(), opt.init(x0)
    for t in range(1, 61):
        x_ref = step(x_ref, grad_of(x_ref), ref_slots, hp, t)
        if problem == "quadratic":
            theta, state = opt.update(theta, grad_of(theta), state)  # the pure API, lr=None: configured lr
        else:
            opt.apply(theta, grad_of(theta), state, lr)  # the engine's in-place call
        assert relative_difference(theta, x_ref) <= 1e-12, (t, relative_difference(theta, x_ref))
    assert int(state.count[0]) == 60
    for k in slots:
        assert relative_difference(getattr(state, k), ref_slots[k]) <= 1e-12
    assert relative_difference(theta, x0) > 1e-3  # it moved


@pytest.mark.parametrize("name", WITH_MOMENTUM)
def test_scheduled_momentum_replaces_the_configured_one(name):
    """apply(..., momentum=m) behaves exactly like the rule configured with that momentum; None = configured."""
    field = OPTIMIZERS.build(name).momentum_field
    x0, grad_of = quadratic(P=8, seed=3)
    scheduled, configured = build(name, lr=0.05), build(name, lr=0.05, **{field: 0.6})
    a, sa = x0.copy(), scheduled.init(x0)
    b, sb = x0.copy(), configured.init(x0)
    for _ in range(10):
        scheduled.apply(a, grad_of(a), sa, 0.05, 0.6)
        configured.apply(b, grad_of(b), sb, 0.05, None)
    np.testing.assert_array_equal(a, b)
    assert scheduled.momentum == getattr(scheduled.cfg, field) != 0.6


def test_nesterov_ahead_form_is_the_lookahead_definition():
    """Classical Nesterov: v = mu v - lr grad(x + mu v); x += v. With phi = x + mu v the notes' ahead form
    updates phi directly; both must give the same trajectory."""
    mu, lr = 0.9, 0.05
    x_soft, loss_grad, _ = softmax_problem()
    for x0, grad_of in (quadratic(seed=4), (x_soft, lambda z: loss_grad(z)[1])):
        opt = OPTIMIZERS.build("nesterov", lr=lr, mu=mu)
        phi, state = x0.copy(), opt.init(x0)
        x, v = x0.copy(), np.zeros_like(x0)  # v0 = 0, so phi0 = x0
        for t in range(60):
            v = mu * v - lr * grad_of(x + mu * v)
            x = x + v
            opt.apply(phi, grad_of(phi), state, lr)
            assert relative_difference(phi, x + mu * v) <= 1e-12, t
            assert relative_difference(state.v, v) <= 1e-12, t


def test_adam_bias_correction_by_hand():
    """beta1 0.9, beta2 0.999, lr 0.1, gradients 2, -1, 4 on one parameter from x = 0:
    t=1: m = 0.2, v = 0.004; mt = 0.2/0.1 = 2, vt = 0.004/0.001 = 4 -> step -0.1 * 2 / (2 + eps)
    t=2: m = 0.18 - 0.1 = 0.08, v = 0.003996 + 0.001 = 0.004996; mt = 0.08/0.19, vt = 0.004996/0.001999
    t=3: m = 0.072 + 0.4 = 0.472, v = 0.004991004 + 0.016 = 0.020991004;
         mt = 0.472/0.271, vt = 0.020991004/0.002997001."""
    eps = 1e-8
    expected_steps = [-0.1 * 2 / (2 + eps),
                      -0.1 * (0.08 / 0.19) / (math.sqrt(0.004996 / 0.001999) + eps),
                      -0.1 * (0.472 / 0.271) / (math.sqrt(0.020991004 / 0.002997001) + eps)]
    opt = OPTIMIZERS.build("adam", lr=0.1, beta1=0.9, beta2=0.999, eps=eps)
    theta = np.zeros(1)
    state = opt.init(theta)
    x = 0.0
    for g, step in zip((2.0, -1.0, 4.0), expected_steps):
        theta, state = opt.update(theta, np.array([g]), state)
        x += step
        assert theta[0] == pytest.approx(x, rel=1e-12)
    assert int(state.count[0]) == 3
    assert state.m[0] == pytest.approx(0.472, rel=1e-12)
    assert state.v[0] == pytest.approx(0.020991004, rel=1e-12)
    # without the correction the first step would be -0.1 * 0.2 / (sqrt(0.004) + eps), about 0.32: not 0.1
    assert abs(expected_steps[0]) == pytest.approx(0.1, rel=1e-8)


def test_defaults_are_the_notes_values():
    cfg = {n: OPTIMIZERS.defaults(n) for n in ALL}
    assert cfg["momentum"]["mu"] == cfg["nesterov"]["mu"] == 0.9
    assert cfg["adagrad"]["eps"] == cfg["rmsprop"]["eps"] == cfg["adam"]["eps"] == 1e-8
    assert cfg["rmsprop"]["decay"] == 0.99
    assert (cfg["adam"]["beta1"], cfg["adam"]["beta2"]) == (0.9, 0.999)
    assert OPTIMIZERS.build("momentum").momentum_field == "mu"
    assert OPTIMIZERS.build("adam").momentum_field == "beta1"


@pytest.mark.parametrize("name", FIRST_ORDER)
def test_update_does_not_mutate_inputs_and_lr_none_is_configured(name):
    rng = np.random.default_rng(5)
    opt = build(name)
    theta, grad = rng.standard_normal(30), rng.standard_normal(30)
    state = opt.init(theta)
    theta, state = opt.update(theta, grad, state)  # non-zero slots
    copies = (theta.copy(), grad.copy(), [s.copy() for s in state])
    new_theta, new_state = opt.update(theta, grad, state, lr=None)
    np.testing.assert_array_equal(theta, copies[0])
    np.testing.assert_array_equal(grad, copies[1])
    for s, c in zip(state, copies[2]):
        np.testing.assert_array_equal(s, c)
    assert int(new_state.count[0]) == 2 and new_state._fields[0] == "count"
    assert not np.shares_memory(new_theta, theta)
    assert not np.array_equal(new_theta, theta)
    explicit, _ = opt.update(theta, grad, state, lr=opt.cfg.lr)
    np.testing.assert_array_equal(new_theta, explicit)


@pytest.mark.parametrize("name", FIRST_ORDER)
def test_float32_parameters(name):
    """float32 runs (dtype=float32) update float32 vectors in place; they track float64 to float32 precision."""
    x0, grad_of = quadratic(P=10, seed=6)
    opt = build(name, lr=0.05)
    a64, s64 = x0.copy(), opt.init(x0)
    a32 = x0.astype(np.float32)
    s32 = opt.init(a32)
    for _ in range(20):
        opt.apply(a64, grad_of(a64), s64, 0.05)
        opt.apply(a32, grad_of(a32.astype(np.float64)).astype(np.float32), s32, 0.05)
    assert a32.dtype == np.float32
    assert relative_difference(a32.astype(np.float64), a64) < 1e-4


# --- L-BFGS ---

def newton_optimum(loss_grad, hessian, theta):
    """Damped Newton to machine precision (the reference optimum)."""
    for _ in range(100):
        f, g = loss_grad(theta)
        if np.max(np.abs(g)) < 1e-13:
            break
        step = np.linalg.solve(hessian(theta), g)
        alpha = 1.0
        while loss_grad(theta - alpha * step)[0] > f and alpha > 1e-10:
            alpha /= 2
        theta = theta - alpha * step
    assert np.max(np.abs(loss_grad(theta)[1])) < 1e-12
    return theta


@pytest.mark.parametrize("name", FULL_BATCH)
def test_full_batch_optimizer_reaches_newton_optimum(name):
    theta0, loss_grad, hessian = softmax_problem(N=200, D=6, C=4, reg=0.05, seed=7)
    f_star = loss_grad(newton_optimum(loss_grad, hessian, theta0.copy()))[0]
    opt = OPTIMIZERS.build(name)
    theta = theta0.copy()
    state = opt.init(theta)
    losses = []
    for _ in range(5):
        losses += opt.run_epoch(theta, state, lambda th, g: loss_grad(th, g)[0], opt.cfg.lr)
    assert abs(loss_grad(theta)[0] - f_star) / f_star <= 1e-6
    assert np.all(np.diff(losses) <= 1e-15)  # a line-search method never goes uphill
    assert 0 < int(state.count[0]) <= 5 * opt.cfg.iterations


def test_lbfgs_epochs_restart_so_epoch_checkpoints_are_exact():
    """Two epochs in one object equal one epoch, a 'checkpoint' (theta and count copied out), and one epoch in
    a fresh object: the curvature history does not survive an epoch."""
    theta0, loss_grad, _ = softmax_problem(N=100, D=4, C=3, reg=0.05, seed=8)
    fg = lambda th, g: loss_grad(th, g)[0]  # noqa: E731
    opt = OPTIMIZERS.build("lbfgs", iterations=5)
    a = theta0.copy()
    sa = opt.init(a)
    opt.run_epoch(a, sa, fg, 1.0)
    opt.run_epoch(a, sa, fg, 1.0)
    b = theta0.copy()
    sb = opt.init(b)
    opt.run_epoch(b, sb, fg, 1.0)
    b2, sb2 = b.copy(), opt.state_from_arrays({k: v.copy() for k, v in opt.state_arrays(sb).items()})
    OPTIMIZERS.build("lbfgs", iterations=5).run_epoch(b2, sb2, fg, 1.0)
    np.testing.assert_array_equal(a, b2)
    assert int(sa.count[0]) == int(sb2.count[0]) == 10


def test_lbfgs_runs_with_one_blas_thread_and_reports_its_work():
    """During an epoch BLAS runs on one thread (restored after); last_epoch counts what scipy did, checked
    against the test's own count of loss evaluations."""
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS so threadpoolctl sees it)
    from threadpoolctl import threadpool_info, threadpool_limits

    theta0, loss_grad, _ = softmax_problem(N=100, D=4, C=3, reg=0.05, seed=8)
    seen_threads, calls = set(), [0]

    def fg(theta, grad):
        calls[0] += 1
        seen_threads.update(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        return loss_grad(theta, grad)[0]

    opt = OPTIMIZERS.build("lbfgs", iterations=7)
    theta = theta0.copy()
    state = opt.init(theta)
    with threadpool_limits(limits=2, user_api="blas"):  # as on a 2-core machine, whatever this one has
        opt.run_epoch(theta, state, fg, 1.0)
        after = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    assert seen_threads == {1}
    assert after == {2}
    e = opt.last_epoch
    assert e["iterations"] == int(state.count[0]) == 7 and e["stop"] == "iteration limit"
    assert e["evaluations"] == calls[0] >= 8
    assert e["line_search_extra"] == calls[0] - 1 - 7
    assert opt.epoch_summary().startswith(f"L-BFGS 7 it, {calls[0]} f-evals")
    # converged before the limit: the reason says so
    opt.run_epoch(theta, state, fg, 1.0)
    opt.run_epoch(theta, state, fg, 1.0)
    opt = OPTIMIZERS.build("lbfgs", iterations=200)
    opt.run_epoch(theta, opt.init(theta), fg, 1.0)
    assert opt.last_epoch["stop"].startswith("converged") and opt.last_epoch["iterations"] < 200


def test_lbfgs_epoch_line_shows_its_work_not_lr(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="framework"):
        summary = framework.train(compose_config(*FAST, "optimizer=lbfgs", "epochs=2", "optimizer.iterations=5"),
                                  run_dir=tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2 and all("L-BFGS 5 it, " in line and "  lr " not in line for line in lines)
    done = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("done in"))
    assert "2 full-batch epochs, 10 lbfgs iterations" in done and "steps/s" not in done
    assert any("BLAS limited to 1 thread" in r.getMessage() for r in caplog.records)
    assert summary["status"] == "ok"


def test_lbfgs_has_no_minibatch_update():
    opt = OPTIMIZERS.build("lbfgs")
    with pytest.raises(framework.FrameworkError, match="full training batch"):
        opt.update(np.zeros(3), np.ones(3), opt.init(np.zeros(3)))


# --- bad hyperparameters ---

BAD = [("momentum", "mu", 1.0, "[0, 1)"), ("nesterov", "mu", -0.1, "[0, 1)"), ("rmsprop", "decay", 1.0, "(0, 1)"),
       ("rmsprop", "decay", 0.0, "(0, 1)"), ("adagrad", "eps", 0.0, "(0, inf)"), ("adam", "eps", -1e-8, "(0, inf)"),
       ("adam", "beta1", 1.0, "[0, 1)")]


@pytest.mark.parametrize("name,key,value,allowed", BAD)
def test_bad_hyperparameter_names_key_and_range(name, key, value, allowed):
    with pytest.raises(ConfigError) as info:
        OPTIMIZERS.build(name, **{key: value})
    text = str(info.value)
    assert f"optimizer.{key}" in text and allowed in text and repr(value) in text


@pytest.mark.parametrize("args,pieces", [(["optimizer=nesterov", "optimizer.mu=1.0"], ["optimizer.mu", "[0, 1)"]),
                                         (["optimizer=rmsprop", "optimizer.decay=0"], ["optimizer.decay", "(0, 1)"]),
                                         (["optimizer=adagrad", "optimizer.eps=0"], ["optimizer.eps", "(0, inf)"])])
def test_bad_hyperparameter_through_the_cli(cli, args, pieces):
    assert_clean_failure(cli(*args, "preflight=off", "epochs=1"), pieces)


# --- the default lr of every optimizer trains the default MLP on digits ---

@pytest.mark.parametrize("name", ALL)
def test_default_lr_trains_digits(name, tmp_path):
    cfg = compose_config(*FAST, f"optimizer={name}")
    assert cfg.lr == OPTIMIZERS.defaults(name)["lr"]  # the documented default, from conf/optimizer/<name>.yaml
    summary = framework.train(cfg, run_dir=tmp_path)
    assert summary["status"] == "ok"
    assert summary["metrics"]["test_acc"] > 0.90, summary["metrics"]
