"""Schedules (notes 4.2, 4.4): closed forms at t = 0, a boundary and a late step; plateau reductions with
cooldown and floor; warm-up; bad arguments; a momentum schedule driving the optimizer end to end."""
import json
import math

import pytest

import framework
from framework import SCHEDULES
from framework.core.errors import ConfigError

from conftest import FAST, assert_clean_failure, compose_config

BASE = 0.2

# name -> (options, [(t, expected value for base BASE)]), each value worked out from the formula by hand.
CLOSED_FORMS = {
    "constant": ({}, [(0, 0.2), (1, 0.2), (1000, 0.2)]),
    "step": ({"factor": 0.5, "every": 5}, [(0, 0.2), (4, 0.2), (5, 0.1), (9.5, 0.1), (10, 0.05), (23, 0.0125)]),
    "exponential": ({"k": 0.1}, [(0, 0.2), (10, 0.2 * math.exp(-1)), (50, 0.2 * math.exp(-5))]),
    "inverse_time": ({"k": 0.1}, [(0, 0.2), (10, 0.1), (90, 0.02)]),
    "cosine": ({"period": 10, "min_factor": 0.1},
               [(0, 0.2), (5, 0.2 * 0.55), (10, 0.02), (25, 0.02)]),
    "plateau": ({}, [(0, 0.2), (7, 0.2), (10 ** 6, 0.2)]),  # nothing observed: no reduction
    "ramp": ({"start": 0.5, "end": 0.99, "length": 10}, [(0, 0.5), (5, 0.745), (10, 0.99), (100, 0.99)]),
}


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_closed_form(name):
    if name not in CLOSED_FORMS:
        pytest.fail(f"schedule {name!r} has no closed-form case in tests/test_schedules.py: add one")
    options, cases = CLOSED_FORMS[name]
    schedule = SCHEDULES.build(name, **options)
    for t, expected in cases:
        assert schedule.value(t, BASE) == pytest.approx(expected, rel=1e-12, abs=1e-15), t


def test_cosine_warm_restarts():
    plain = SCHEDULES.build("cosine", period=10, min_factor=0.1, restart=True)
    # cycles [0, 10), [10, 20), ...: back to base at each start, halfway value 0.55 * base in the middle
    three_quarters = 0.1 + 0.9 * 0.5 * (1 + math.cos(0.75 * math.pi))
    for t, factor in [(0, 1.0), (5, 0.55), (10, 1.0), (15, 0.55), (37.5, three_quarters)]:
        assert plain.value(t, 2.0) == pytest.approx(2.0 * factor, rel=1e-12), t
    grow = SCHEDULES.build("cosine", period=10, min_factor=0.0, restart=True, period_mult=2)
    # cycles [0, 10), [10, 30), [30, 70), [70, 150)
    for t, factor in [(0, 1.0), (10, 1.0), (20, 0.5), (30, 1.0), (50, 0.5), (70, 1.0), (110, 0.5), (150, 1.0)]:
        assert grow.value(t, 1.0) == pytest.approx(factor, rel=1e-12, abs=1e-15), t
    assert grow.value(29.999999, 1.0) < 1e-9  # just before a restart: at the bottom


def test_ramp_ignores_the_base_value():
    ramp = SCHEDULES.build("ramp", start=0.5, end=0.99, length=10)
    assert ramp.value(3, 0.9) == ramp.value(3, 123.0) == pytest.approx(0.5 + 0.49 * 0.3)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_warmup_is_linear_then_the_schedule(name):
    options = CLOSED_FORMS.get(name, ({}, []))[0]
    plain = SCHEDULES.build(name, **options)
    warm = SCHEDULES.build(name, **options, warmup=4)
    for t in range(0, 12):
        scale = (t + 1) / 5 if t < 4 else 1.0  # rises as 1/5, 2/5, ..., 4/5, then the schedule itself
        assert warm.value(t, BASE) == pytest.approx(scale * plain.value(t, BASE), rel=1e-12), t


def observe_all(schedule, metrics, base=1.0):
    """lr in force after each observed epoch metric."""
    out = []
    for m in metrics:
        schedule.observe(m)
        out.append(schedule.value(0, base))
    return out


def test_plateau_reduces_exactly_after_patience_epochs():
    p = SCHEDULES.build("plateau", factor=0.5, patience=2, threshold=0.01, cooldown=0)
    # 0.50 best; 0.505 and 0.509 do not beat 0.50 by more than 0.01 -> 2 bad epochs -> halve;
    # 0.52 improves (> 0.51); then 2 more bad epochs -> halve again
    metrics = [0.50, 0.505, 0.509, 0.52, 0.52, 0.521]
    assert observe_all(p, metrics) == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    assert p.state_dict()["reductions"] == 2


def test_plateau_improvement_resets_patience():
    p = SCHEDULES.build("plateau", factor=0.1, patience=3, threshold=0.0)
    assert observe_all(p, [0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.2]) == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.1]


def test_plateau_cooldown_and_floor():
    p = SCHEDULES.build("plateau", factor=0.5, patience=1, threshold=0.0, cooldown=2, min_lr=0.3)
    # epoch 2 is bad -> 0.5; epochs 3-4 are cooldown (no reduction however bad); epoch 5 bad -> 0.25 floored
    # to 0.3; epochs 6-7 cooldown; epoch 8 bad -> still 0.3
    lrs = observe_all(p, [0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8])
    assert lrs == [1.0, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3]
    assert p.value(0, 0.1) == 0.1  # the floor never raises a base that is already below it


def test_plateau_ignores_nan_metric():
    p = SCHEDULES.build("plateau", factor=0.5, patience=1)
    assert observe_all(p, [0.5, math.nan, math.nan, math.nan]) == [1.0] * 4


def test_plateau_state_round_trip_as_plain_numbers():
    metrics = [0.5, 0.4, 0.6, 0.6, 0.6, 0.59, 0.7, 0.7, 0.7]
    whole = SCHEDULES.build("plateau", factor=0.5, patience=2, cooldown=1)
    expected = observe_all(whole, metrics)
    first = SCHEDULES.build("plateau", factor=0.5, patience=2, cooldown=1)
    observe_all(first, metrics[:4])
    state = json.loads(json.dumps(first.state_dict()))  # plain numbers survive any serializer
    assert all(isinstance(v, (int, float)) for v in state.values())
    second = SCHEDULES.build("plateau", factor=0.5, patience=2, cooldown=1)
    second.load_state_dict(state)
    assert observe_all(second, metrics[4:]) == expected[4:]


BAD = [("step", "factor", 0.0, "(0, 1]"), ("step", "factor", -0.5, "(0, 1]"), ("step", "every", 0, "[1, inf)"),
       ("plateau", "factor", 1.0, "(0, 1)"), ("plateau", "min_lr", -1e-3, "[0, inf)"),
       ("inverse_time", "k", -0.1, "[0, inf)"), ("exponential", "k", -1.0, "[0, inf)"),
       ("cosine", "min_factor", -0.5, "[0, 1]"), ("cosine", "period", 0, "(0, inf)"),
       ("ramp", "end", 1.0, "[0, 1)"), ("ramp", "start", -0.1, "[0, 1)")]


@pytest.mark.parametrize("name,key,value,allowed", BAD)
def test_bad_argument_is_an_error_at_build_time(name, key, value, allowed):
    with pytest.raises(ConfigError) as info:
        SCHEDULES.build(name, **{key: value})
    assert f"schedule.{key}" in str(info.value) and allowed in str(info.value)


@pytest.mark.parametrize("args,pieces", [
    (["schedule=step", "schedule.factor=0"], ["schedule.factor", "(0, 1]"]),
    (["schedule=inverse_time", "schedule.k=-0.5"], ["schedule.k", "[0, inf)", "negative"]),
])
def test_bad_schedule_through_the_cli(cli, args, pieces):
    assert_clean_failure(cli(*args, "preflight=off", "epochs=1"), pieces)


class Recorder(framework.Callback):
    def on_train_end(self, run):
        self.history = {k: list(v) for k, v in run.history.items()}


def train_recorded(tmp_path, *overrides):
    rec = Recorder()
    summary = framework.train(compose_config(*FAST, "epochs=3", *overrides), run_dir=tmp_path, callbacks=[rec])
    return summary, rec.history


def test_momentum_schedule_drives_the_optimizer(tmp_path):
    """+momentum_schedule=ramp sets the momentum each epoch (0.5 + 0.049 t for the default ramp), and the
    scheduled value is what the update rule uses: a flat ramp at 0.6 trains exactly like mu = 0.6."""
    _, history = train_recorded(tmp_path / "a", "optimizer=nesterov", "+momentum_schedule=ramp")
    assert history["momentum"] == pytest.approx([0.5, 0.549, 0.598], rel=1e-12)
    flat, _ = train_recorded(tmp_path / "b", "optimizer=nesterov", "+momentum_schedule=ramp",
                             "momentum_schedule.start=0.6", "momentum_schedule.end=0.6")
    fixed, _ = train_recorded(tmp_path / "c", "optimizer=nesterov", "optimizer.mu=0.6")
    default, _ = train_recorded(tmp_path / "d", "optimizer=nesterov")
    assert flat["metrics"]["val/loss"] == fixed["metrics"]["val/loss"]
    assert default["metrics"]["val/loss"] != fixed["metrics"]["val/loss"]


def test_lr_schedule_reaches_the_run(tmp_path):
    _, history = train_recorded(tmp_path, "optimizer=sgd", "schedule=step", "schedule.every=1",
                                "schedule.factor=0.5")
    assert history["lr"] == pytest.approx([0.1, 0.05, 0.025], rel=1e-12)
