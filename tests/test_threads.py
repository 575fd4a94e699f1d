"""Wide layers split their GEMMs' rows over threads (framework.threads): the numbers equal one thread's, bit for
bit, for every activation and loss; and the split only happens where it pays."""
import numpy as np
import pytest

import framework
from framework.layers import sequential as sequential_module
from framework.kernels import dense as K
from framework.engine import threads
from framework.engine.run import Run

from conftest import FAST, compose_config


def fit(tmp_path, parts, *overrides, monkeypatch):
    """Train with every product split over `parts` threads (thresholds lowered so the small digits MLP
    qualifies), on the own GEMM (the one threads split; gemm_choice's tests cover BLAS)."""
    monkeypatch.setenv("FRAMEWORK_GEMM", "own")
    monkeypatch.setattr(sequential_module, "WIDE_MIN_WORK", 0)
    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(threads, "threads", lambda: parts)
    cfg = compose_config(*FAST, "epochs=2", "model.hidden_sizes=[40,24]", *overrides)
    run = Run(cfg, tmp_path / str(parts))
    run.fit()
    return run


@pytest.mark.parametrize("overrides", [[], ["dtype=float32"], ["model.activation=tanh", "model.loss=svm"],
                                       ["model.activation=leaky_relu", "batch_size=45"],
                                       *[[f"optimizer={name}"] for name in framework.OPTIMIZERS.names()]])
def test_split_gemms_equal_one_thread_bit_for_bit(tmp_path, monkeypatch, overrides):
    calls = []
    original = threads.gemm

    def counting(A, B, C, Z, ldz, init, parts):
        calls.append(parts)
        return original(A, B, C, Z, ldz, init, parts)

    monkeypatch.setattr(threads, "gemm", counting)
    updates = []
    original_update = threads.elementwise
    monkeypatch.setattr(threads, "elementwise", lambda call, *a: updates.append(call) or original_update(call, *a))
    one = fit(tmp_path, 1, *overrides, monkeypatch=monkeypatch)
    assert calls == []  # one thread: the fused kernel path
    two = fit(tmp_path, 2, *overrides, monkeypatch=monkeypatch)
    three = fit(tmp_path, 3, *overrides, monkeypatch=monkeypatch)
    assert calls and set(calls) <= {2, 3}
    assert bool(updates) == ("optimizer=lbfgs" not in overrides)  # the update split too (L-BFGS has none)
    for other in (two, three):
        assert np.array_equal(one.theta, other.theta) and np.array_equal(one.ema, other.ema)
        for x, y in zip(one.opt_state, other.opt_state):  # the step counter advanced once per step
            assert np.array_equal(x, y)
        np.testing.assert_equal(one.history, other.history)


def test_gemm_rows_split_matches_kernel(monkeypatch):
    monkeypatch.setenv("FRAMEWORK_GEMM", "own")
    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)
    rng = np.random.default_rng(0)
    A, B, bias = rng.standard_normal((203, 70)), rng.standard_normal((70, 33)), rng.standard_normal(33)
    want, got = np.empty((203, 33)), np.empty((203, 33))
    K.gemm(A, B, want, bias, 0, True)
    for parts in (2, 3, 7):
        threads.gemm(A, B, got, bias, 0, True, parts)  # m > n: split by rows
        assert np.array_equal(want, got)
        wide_want, wide_got = np.empty((33, 203)), np.empty((33, 203))
        At, row = np.ascontiguousarray(A.T), rng.standard_normal(203)
        K.gemm(B.T, At, wide_want, row, 0, True)
        threads.gemm(B.T, At, wide_got, row, 0, True, parts)  # m < n: split by columns
        assert np.array_equal(wide_want, wide_got)
    K.gemm(A.T.copy().T, B, want, want, 0, False)
    threads.gemm(A.T.copy().T, B, got, got, 0, False, 4)
    assert np.array_equal(want, got)


def test_small_models_and_dropout_keep_the_fused_path(tmp_path):
    run = Run(compose_config(*FAST, "epochs=1"), tmp_path / "a")
    assert run.model.step_threads(32) == 1  # 32 x 19k parameters: far below WIDE_MIN_WORK
    wide = compose_config(*FAST, "epochs=1", "model.hidden_sizes=[4096,4096]", "model.keep_prob=0.5")
    assert Run(wide, tmp_path / "b").model.step_threads(256) == 1  # dropout masks: one call per step


def test_kink_detection_reads_the_threaded_forward_pass(tmp_path, monkeypatch):
    """winners() reads the activations loss_grad left in the model's scratch: the threaded path must leave them
    where the fused kernel does."""
    monkeypatch.setattr(sequential_module, "WIDE_MIN_WORK", 0)
    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)
    run = Run(compose_config(*FAST, "epochs=1", "model.hidden_sizes=[40,24]"), tmp_path)
    X, y = run.data.X_train[:32], run.data.y_train[:32]
    found = {}
    run.model._reserve(len(y))
    for parts in (1, 2):
        monkeypatch.setattr(threads, "threads", lambda parts=parts: parts)
        run.model._work[:] = np.nan  # nothing left over from the other path
        found[parts] = run.model.winners(run.theta, X, y)
    assert found[1].size > 0 and np.array_equal(found[1], found[2])
