"""Babysitting diagnostics (notes section 3): the advice rules on numbers, then real runs whose learning rate,
capacity or initialization is wrong and must get the matching advice (and a default run that must get none)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import framework
from framework.monitoring.diagnostics import (Thresholds, as_markdown, divergence_finding, fit_findings, short, unit_findings,
                                   unit_fractions, update_ratio_findings)
from framework.core.errors import ConfigError, DivergedError
from conftest import compose_config

TH = Thresholds()


def compose(*overrides):
    """The real config, shrunk: no pre-flight, checkpoints or event files, plus `overrides`."""
    return compose_config("preflight=off", "checkpoint=null", "tensorboard.enabled=false", *overrides)


def checks(summary) -> dict[str, list[str]]:
    """{check: [subjects]} of a summary's diagnostics."""
    out: dict[str, list[str]] = {}
    for f in summary["diagnostics"]:
        out.setdefault(f["check"], []).append(f["subject"])
    return out


# --- the rules ---
def test_short_formats_like_the_notes():
    assert [short(x) for x in (3e-6, 0.002, 1e-3, 0.031, 12.0)] == ["3e-6", "2e-3", "1e-3", "3e-2", "1e1"]


def test_update_ratio_band():
    found = update_ratio_findings({"W1": 3e-6, "W2": 1e-3, "W3": 0.05, "W4": float("nan")}, TH)
    assert [(f.check, f.subject) for f in found] == [("lr_too_low", "W1"), ("lr_too_high", "W3")]
    assert found[0].message == ("learning rate likely too low for block W1 (update/weight ratio 3e-6, healthy ~1e-3; "
                                "notes 3.3)")
    assert found[1].message.startswith("learning rate likely too high for block W3 (update/weight ratio 5e-2")
    # the band edges are the configured thresholds
    assert update_ratio_findings({"W1": 9.9e-5, "W2": 1.01e-2}, TH)[1].check == "lr_too_high"
    assert update_ratio_findings({"W1": 1e-4, "W2": 1e-2}, TH) == []
    assert update_ratio_findings({"W1": 5e-4}, Thresholds(ratio_low=1e-3)) != []


@pytest.mark.parametrize("train, val, expected", [
    (1.0, 0.85, "overfitting"),  # gap 0.15 > 0.1
    (0.95, 0.9, None),  # a healthy gap
    (0.60, 0.59, "low_capacity"),  # val tracks train at low accuracy
    (0.60, 0.61, "low_capacity"),  # ... also when val is a hair above train
    (0.60, 0.55, None),  # gap 0.05: neither
    (0.90, 0.89, None),  # tracks, but accuracy is fine
    (float("nan"), 0.5, None),
])
def test_fit_rules(train, val, expected):
    found = fit_findings(train, val, TH)
    assert [f.check for f in found] == ([expected] if expected else [])
    assert all("notes 3.2" in f.message for f in found)


def test_low_capacity_is_not_blamed_when_the_lr_is_suspect():
    assert fit_findings(0.2, 0.2, TH, lr_suspect=True) == []
    assert fit_findings(1.0, 0.5, TH, lr_suspect=True)[0].check == "overfitting"


def test_unit_fractions_and_findings():
    a = np.zeros((10, 4))
    a[3, 0] = 1.0  # unit 0 active once; units 1-3 never active
    a[:, 1] = -0.5
    dead, saturated = unit_fractions({"layer1": a}, "relu")
    assert dead == {"layer1": 0.75} and saturated == {}
    t = np.zeros((10, 4))
    t[:6, 0] = 0.995  # saturated on 6 of 10 rows: most of the sample
    t[:5, 1] = -0.999  # exactly half: not most
    t[:, 2] = 0.98  # below the 0.99 level
    dead, saturated = unit_fractions({"layer1": t}, "tanh")
    assert dead == {} and saturated == {"layer1": 0.25}
    found = unit_findings({"layer1": 0.75, "layer2": 0.5}, {"layer3": 0.9}, TH, rows=10)
    assert [(f.check, f.subject) for f in found] == [("dead_relu", "layer1"), ("saturated_tanh", "layer3")]
    assert all("notes 3.4" in f.message for f in found) and "75%" in found[0].message


def test_unit_fractions_per_layer_kind_and_per_channel():
    """A layered model gives each layer its own kind (tanh outputs are never read as dead ReLUs, nor ReLUs as
    saturated tanh) and, on images, a unit is a channel over every row and position."""
    t = np.full((10, 2), 0.995)  # saturated on every row
    t[:, 1] = -0.999  # a tanh unit never positive: saturated, never "dead"
    r = np.zeros((10, 3 * 2))  # 3 positions x 2 channels, channels last
    r[4, 2 * 2 + 0] = 0.3  # channel 0 fires once, at the last position; channel 1 never
    dead, saturated = unit_fractions({"layer2_tanh": t, "layer4_relu": r}, {"layer2_tanh": "tanh",
                                     "layer4_relu": "relu"}, channels={"layer2_tanh": 0, "layer4_relu": 2})
    assert dead == {"layer4_relu": 0.5} and saturated == {"layer2_tanh": 1.0}
    dead, _ = unit_fractions({"layer4_relu": r}, {"layer4_relu": "relu"})  # per column: 5 of 6 never fire
    assert dead == {"layer4_relu": pytest.approx(5 / 6)}
    assert unit_fractions({"layer1_x": r}, {"layer1_x": None}) == ({}, {})  # no kind: neither


def test_divergence_and_markdown():
    f = divergence_finding(3, 10.0)
    assert f.check == "diverged" and "notes 3.1" in f.message and "lr=10" in f.message
    assert as_markdown([f]).startswith("- **diverged**: loss exploded")
    assert "No problems" in as_markdown([])
    assert f.as_dict() == {"check": "diverged", "message": f.message, "notes": "3.1", "subject": "", "value": 10.0}


@pytest.mark.parametrize("node, key", [({"ratio_low": 0}, "diagnostics.ratio_low"),
                                       ({"ratio_low": 0.1}, "diagnostics.ratio_low"),  # above ratio_high
                                       ({"overfit_gap": 1.5}, "diagnostics.overfit_gap"),
                                       ({"saturation": "high"}, "diagnostics.saturation"),
                                       ({"enabled": "yes"}, "diagnostics.enabled"),
                                       ({"typo": 1}, "diagnostics.typo")])
def test_thresholds_validation(node, key):
    with pytest.raises(ConfigError) as info:
        Thresholds.from_cfg(node)
    assert info.value.key == key


# --- real runs ---
def test_default_run_gets_no_advice(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="framework"):
        summary = framework.train(compose(), run_dir=tmp_path)
    assert summary["status"] == "ok" and summary["diagnostics"] == []
    assert not [r for r in caplog.records if "diagnostics" in r.getMessage()]
    assert json.loads((tmp_path / "summary.json").read_text())["diagnostics"] == []


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("multiple, side", [(100, "high"), (1e-3, "low"), (1, None)])
def test_learning_rate_advice(tmp_path, caplog, optimizer, multiple, side):
    """100x the optimizer's default lr is judged too high, 1000x below it too low, the default neither."""
    base = compose(f"optimizer={optimizer}")
    lr = base.optimizer.lr * multiple
    with caplog.at_level(logging.WARNING, logger="framework"):
        summary = framework.train(compose(f"optimizer={optimizer}", f"lr={lr!r}", "epochs=5"), run_dir=tmp_path)
    found = checks(summary)
    wrong = {"lr_too_high", "lr_too_low"} - {f"lr_too_{side}"}
    assert not wrong & set(found)
    if side is None:
        assert found == {}
        return
    assert "W1" in found[f"lr_too_{side}"]
    message = next(f["message"] for f in summary["diagnostics"] if f["check"] == f"lr_too_{side}")
    assert message.startswith(f"learning rate likely too {side} for block W")
    assert message.endswith("healthy ~1e-3; notes 3.3)")
    assert any(message in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    if side == "low":  # the slow progress is blamed on the learning rate, not on the model's capacity
        assert "low_capacity" not in found


def test_overfitting_advice(tmp_path):
    cfg = compose("data.max_train=50", "model.hidden_sizes=[512]", "reg=0", "regularizer=none", "epochs=10")
    summary = framework.train(cfg, run_dir=tmp_path)
    found = checks(summary)
    assert "overfitting" in found and "low_capacity" not in found
    # 2 steps per epoch: the only update-ratio sample is the very first step (Adam's first update is lr per
    # weight whatever the gradient); the rule judges samples after the first epoch, so it says nothing here
    assert "lr_too_high" not in found and "lr_too_low" not in found
    m = summary["metrics"]
    assert m["train/acc"] - m["val/acc"] > 0.1


def test_saturated_tanh_advice(tmp_path):
    summary = framework.train(compose("model.activation=tanh", "model.init_scale=30", "epochs=2"), run_dir=tmp_path)
    assert checks(summary)["saturated_tanh"] == ["layer1"]


def test_diverged_run_gets_advice(tmp_path):
    cfg = compose("optimizer=sgd", "lr=1e6", "model=softmax", "epochs=3", "stop_hopeless.loss_multiple=0")
    with pytest.raises(DivergedError):
        framework.train(cfg, run_dir=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged"
    found = checks(summary)
    assert "diverged" in found and "lr_too_high" in found
    assert "overfitting" not in found and "dead_relu" not in found  # NaN weights prove nothing else


def test_capacity_is_judged_only_after_enough_epochs():
    # numbers of a 1-epoch coarse-search trial: too early to call the model too small
    assert fit_findings(0.187, 0.2, TH, epochs=1) == []
    assert fit_findings(0.187, 0.2, TH, epochs=4) == []
    assert [f.check for f in fit_findings(0.187, 0.2, TH, epochs=5)] == ["low_capacity"]
    assert fit_findings(0.187, 0.2, TH) != []  # the rule alone (no epoch count) still judges


@pytest.mark.parametrize("epochs, advised", [(1, False), (5, True)])
def test_one_hidden_unit_gets_capacity_advice_only_after_five_epochs(tmp_path, epochs, advised):
    summary = framework.train(compose("model.hidden_sizes=[1]", f"epochs={epochs}"), run_dir=tmp_path)
    assert summary["metrics"]["train/acc"] < 0.3  # one hidden unit: too little capacity at any length
    assert ("low_capacity" in checks(summary)) is advised
