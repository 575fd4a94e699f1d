"""The TensorBoard writer and what a run logs, read back with tensorboard's own readers: the legacy
EventAccumulator (scalars, histograms, images) and the plugin EventAccumulator (text, hparams). The readers check
every record's checksum, so these also guard the project's own record framing against tensorboard's format."""
from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.util import tensor_util

import framework
from framework.core.errors import ConfigError
from framework.monitoring.monitor import HPARAM_METRICS, make_callback
from framework.monitoring.tensorboard import MAIN_HPARAMS, EventWriter, masked_crc32c, select_hparams, tile_images
from framework.engine.callbacks import Callback
from framework.engine.settings import flat_hparams
from conftest import compose_config

KEEP_ALL = {ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0, ea.TENSORS: 0}


def compose(*overrides):
    """The real config, shrunk: no pre-flight, no checkpoints, plus `overrides`."""
    return compose_config("preflight=off", "checkpoint=null", *overrides)


def read(logdir):
    acc = ea.EventAccumulator(str(logdir), size_guidance=KEEP_ALL)
    acc.Reload()
    plugins = pea.EventAccumulator(str(logdir), size_guidance={pea.TENSORS: 0})
    plugins.Reload()
    return acc, plugins


def text_of(plugins, tag) -> str:
    return tensor_util.make_ndarray(plugins.Tensors(tag)[-1].tensor_proto).item().decode()


# --- the writer alone ---
def test_writer_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.standard_normal(1000) * 2.0 + 1.0
    grey = rng.random((5, 7))
    rgb = (rng.random((4, 6, 3)) * 255).astype(np.uint8)
    with EventWriter(tmp_path) as w:
        w.scalars({"a": 0.25, "b/c": -3.0, "skipped": float("nan")}, step=3)
        w.scalar_series("series", [1.0, float("inf"), 3.0], first_step=10)
        w.histogram("h", data, step=2, bins=20)
        w.histogram("constant", np.full(7, 0.5), step=2)
        w.histogram("empty", [np.nan], step=2)
        w.image("grey", grey, step=1)
        w.image("rgb", rgb, step=1)
        w.text("notes", "**bold** text", step=4)
        w.hparams({"lr": 0.01, "model.name": "mlp", "flag": True, "none": None, "bad": float("nan")},
                  ["val/acc", "test_acc"], start_time=123.0)
        w.session_end(ok=False, step=5)
    acc, plugins = read(tmp_path)

    assert [(e.step, e.value) for e in acc.Scalars("a")] == [(3, 0.25)]
    assert [(e.step, e.value) for e in acc.Scalars("b/c")] == [(3, -3.0)]
    assert [(e.step, e.value) for e in acc.Scalars("series")] == [(10, 1.0), (12, 3.0)]  # inf skipped
    assert "skipped" not in acc.Tags()["scalars"] and "empty" not in acc.Tags()["histograms"]

    h = acc.Histograms("h")[0]
    assert h.step == 2
    v = h.histogram_value
    assert (v.min, v.max, v.num) == (data.min(), data.max(), 1000)
    assert v.sum == pytest.approx(data.sum()) and v.sum_squares == pytest.approx(np.dot(data, data))
    counts, edges = np.histogram(data, bins=20)
    assert v.bucket == counts.tolist() and v.bucket_limit == pytest.approx(edges[1:].tolist())
    c = acc.Histograms("constant")[0].histogram_value
    assert (c.min, c.max, c.num, c.bucket) == (0.5, 0.5, 7, [7.0])

    img = acc.Images("grey")[0]
    pixels = np.asarray(Image.open(io.BytesIO(img.encoded_image_string)))
    assert (img.width, img.height) == (7, 5) and pixels.shape == (5, 7)
    np.testing.assert_array_equal(pixels, np.round(grey * 255).astype(np.uint8))
    back = np.asarray(Image.open(io.BytesIO(acc.Images("rgb")[0].encoded_image_string)))
    np.testing.assert_array_equal(back, rgb)

    assert text_of(plugins, "notes") == "**bold** text"
    assert "notes" in plugins.PluginTagToContent("text")
    content = plugins.PluginTagToContent("hparams")
    start = hp_metadata.parse_session_start_info_plugin_data(content[hp_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["lr"].number_value == 0.01 and start.hparams["model.name"].string_value == "mlp"
    assert start.hparams["flag"].bool_value is True and start.start_time_secs == 123.0
    assert set(start.hparams) == {"lr", "model.name", "flag"}  # None and NaN are not hyperparameter values
    experiment = hp_metadata.parse_experiment_plugin_data(content[hp_metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos] == ["val/acc", "test_acc"]
    types = {h.name: h.type for h in experiment.hparam_infos}
    assert types == {"flag": api_pb2.DATA_TYPE_BOOL, "lr": api_pb2.DATA_TYPE_FLOAT64,
                     "model.name": api_pb2.DATA_TYPE_STRING}
    end = hp_metadata.parse_session_end_info_plugin_data(content[hp_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_FAILURE


@pytest.mark.parametrize("size", [0, 1, 8, 55, 4097])
def test_checksum_matches_tensorboards(size):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference

    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert masked_crc32c(data) == reference(data)


def test_events_reach_the_disk_at_flush(tmp_path):
    w = EventWriter(tmp_path)
    w.scalar("a", 1.0, step=1)
    w.flush()
    assert [e.value for e in read(tmp_path)[0].Scalars("a")] == [1.0]  # readable while the writer is open
    w.close()
    w.close()  # closing twice is harmless
    assert w.closed


def test_writer_appends_to_a_run_directory(tmp_path):
    """A resumed run opens a second writer on the same directory: both files are read, in order."""
    with EventWriter(tmp_path) as w:
        w.scalar("loss", 2.0, step=1)
    with EventWriter(tmp_path) as w:
        w.scalar("loss", 1.0, step=2)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(f".{os.getpid()}." in name for name in files)  # the pid keeps them apart
    assert all(name.startswith("events.out.tfevents.") for name in files)
    acc, _ = read(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 2.0), (2, 1.0)]


def test_files_of_one_second_and_process_read_in_creation_order(tmp_path):
    """Twelve writers in the same second: TensorBoard (name order) must still see them in creation order."""
    for step in range(12):
        with EventWriter(tmp_path) as w:
            w.scalar("loss", float(step), step=step)
    acc, _ = read(tmp_path)
    assert [e.step for e in acc.Scalars("loss")] == list(range(12))


def test_resumed_run_appends_to_its_directory(tmp_path):
    """A run resumed from its checkpoint adds a second event file next to the first; together they hold every
    epoch and every iteration once."""
    framework.train(compose_config("preflight=off", "epochs=3"), run_dir=tmp_path)
    summary = framework.train(compose_config("preflight=off", f"resume={tmp_path}", "epochs=5"))
    assert summary["epochs_completed"] == 5 and len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    acc, _ = read(tmp_path)
    assert [e.step for e in acc.Scalars("val/acc")] == [1, 2, 3, 4, 5]
    assert [e.step for e in acc.Scalars("train/loss_iter")] == list(range(1, summary["steps"] + 1))


def test_image_rejects_bad_shapes(tmp_path):
    with EventWriter(tmp_path) as w, pytest.raises(ValueError):
        w.image("x", np.zeros((2, 2, 2)), step=0)


@pytest.mark.parametrize("shape", [(3, 2), (2, 2, 3)])
def test_tile_images_normalises_each_tile(shape):
    D, H = int(np.prod(shape)), 5
    W = np.arange(D * H, dtype=float).reshape(D, H) ** 1.5
    W[:, 4] = 7.0  # a constant unit shows as mid grey
    grid = tile_images(W, shape, pad=1)
    h, w = shape[:2]
    assert grid.shape == (2 * (h + 1) - 1, 3 * (w + 1) - 1) + shape[2:]  # 5 tiles in 2 rows of 3
    for k in range(H):
        r, c = divmod(k, 3)
        tile = grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w]
        column = W[:, k].reshape(shape)
        if k == 4:
            assert np.all(tile == 0.5)
        else:
            np.testing.assert_allclose(tile, (column - column.min()) / (column.max() - column.min()))
    assert np.all(grid[h, :] == 0.5)  # the padding line between the rows
    with pytest.raises(ValueError):
        tile_images(W, (4, 4))


# --- what a run logs ---
class Spy(Callback):
    """Measures independently what the monitor should log: per-step losses by global iteration, and at monitor
    steps ||theta after - theta before|| / ||theta after||, ||grad||, ||theta|| per block."""

    def __init__(self):
        self.losses, self.ratios, self.final = {}, {}, None

    def on_train_start(self, run):
        run.step_callbacks.append(self)
        self.every, self.prev = run.settings.monitor_every, run.theta.copy()

    def on_step(self, run):
        self.losses[run.step] = run.epoch_losses[run.cursor - 1]
        if (run.step - 1) % self.every == 0:
            rows = self.ratios.setdefault(run.epoch + 1, [])
            rows.append({b.name: (np.linalg.norm(run.theta[b.offset:b.stop] - self.prev[b.offset:b.stop])
                                  / np.linalg.norm(run.theta[b.offset:b.stop]),
                                  np.linalg.norm(run.grad[b.offset:b.stop]),
                                  np.linalg.norm(run.theta[b.offset:b.stop])) for b in run.layout})
        self.prev[:] = run.theta

    def on_train_end(self, run):
        self.final = run.theta.copy()
        self.run = run


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    report = {"checks": [{"name": "loss_at_chance", "ok": True, "value": 2.30}]}
    (run_dir / "preflight.json").write_text(json.dumps(report))
    cfg = compose("epochs=6", "tensorboard.histogram_every=5", "monitor.every=10")
    spy = Spy()
    summary = framework.train(cfg, run_dir=run_dir, callbacks=[spy])
    acc, plugins = read(run_dir)
    return cfg, spy, summary, acc, plugins, run_dir


def test_run_logs_every_tag(logged_run):
    cfg, spy, summary, acc, plugins, _ = logged_run
    run = spy.run
    blocks = run.layout.names
    tags = acc.Tags()
    per_epoch = {"train/loss", "train/acc", "val/loss", "val/acc", "lr", "momentum", "val/ema_acc"}
    per_epoch |= {f"{kind}/{b}" for kind in ("update_ratio", "grad_norm", "param_norm") for b in blocks}
    for tag in per_epoch:
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3, 4, 5, 6], tag
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "lr", "val/ema_acc"):
        np.testing.assert_allclose([e.value for e in acc.Scalars(tag)], run.history[tag], rtol=1e-6)
    assert {"dead_relu/layer1", "best_val_acc", "test_acc"} <= set(tags["scalars"])
    assert "saturated_tanh/layer1" not in tags["scalars"]  # a ReLU net
    expected_hist = {"activations/layer1", "weights/W1", "weights/b1", "weights/W2", "weights/b2", "gradients/W1",
                     "gradients/W2"}
    assert set(tags["histograms"]) == expected_hist
    for tag in expected_hist:
        assert [e.step for e in acc.Histograms(tag)] == [5, 6], tag  # every 5 epochs and the last
    assert [e.step for e in acc.Images("first_layer")] == [5, 6]
    assert {"config", "preflight", "diagnostics"} <= set(plugins.PluginTagToContent("text"))
    assert summary["metrics"]["best_val_acc"] == pytest.approx(acc.Scalars("best_val_acc")[-1].value)
    assert summary["metrics"]["test_acc"] == pytest.approx(acc.Scalars("test_acc")[-1].value)


def test_loss_iter_is_indexed_by_global_iteration(logged_run):
    _, spy, _, acc, _, _ = logged_run
    events = acc.Scalars("train/loss_iter")
    assert [e.step for e in events] == sorted(spy.losses) == list(range(1, spy.run.step + 1))
    np.testing.assert_allclose([e.value for e in events], [spy.losses[s] for s in sorted(spy.losses)], rtol=1e-6)


def test_block_norms_are_epoch_means_of_monitor_samples(logged_run):
    _, spy, _, acc, _, _ = logged_run
    assert len(spy.ratios) == 6 and all(len(rows) >= 3 for rows in spy.ratios.values())
    for i, kind in enumerate(("update_ratio", "grad_norm", "param_norm")):
        for block in spy.run.layout.names:
            logged = [e.value for e in acc.Scalars(f"{kind}/{block}")]
            expected = [np.mean([row[block][i] for row in spy.ratios[epoch]]) for epoch in range(1, 7)]
            np.testing.assert_allclose(logged, expected, rtol=1e-5, err_msg=f"{kind}/{block}")


def test_histograms_and_unit_fractions_match_the_final_weights(logged_run):
    cfg, spy, _, acc, _, _ = logged_run
    run, theta = spy.run, spy.final
    W1 = run.layout.view(theta, "W1")
    h = acc.Histograms("weights/W1")[-1].histogram_value
    assert (h.num, h.min, h.max) == (W1.size, W1.min(), W1.max())
    assert h.sum == pytest.approx(W1.sum()) and sum(h.bucket) == W1.size
    sample = run.data.X_val[:500]
    H = cfg.model.hidden_sizes[0]
    hidden = np.maximum(sample @ W1 + run.layout.view(theta, "b1"), 0)
    act = acc.Histograms("activations/layer1")[-1].histogram_value
    assert act.num == len(sample) * H and act.sum == pytest.approx(hidden.sum())
    dead = np.mean(np.all(hidden <= 0, axis=0))
    assert acc.Scalars("dead_relu/layer1")[-1].value == pytest.approx(dead)
    g = acc.Histograms("gradients/W2")[-1].histogram_value
    assert g.sum == pytest.approx(run.layout.view(run.grad, "W2").sum())


def test_first_layer_image_tiles_normalised_hidden_units(logged_run):
    cfg, spy, _, acc, _, _ = logged_run
    W1 = spy.run.layout.view(spy.final, "W1")  # (64, H) digits are 8x8
    H = min(W1.shape[1], 256)
    cols = math.ceil(math.sqrt(H))
    rows = math.ceil(H / cols)
    image = acc.Images("first_layer")[-1]
    pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
    assert pixels.shape == (rows * 9 - 1, cols * 9 - 1)  # 8x8 tiles, 1-pixel grid lines
    for k in (0, H - 1):
        r, c = divmod(k, cols)
        tile = pixels[r * 9:r * 9 + 8, c * 9:c * 9 + 8]
        w = W1[:, k].reshape(8, 8)
        np.testing.assert_array_equal(tile, np.round((w - w.min()) / (w.max() - w.min()) * 255))


def test_text_and_hparams(logged_run):
    cfg, _, summary, acc, plugins, run_dir = logged_run
    config = text_of(plugins, "config")
    assert config.startswith("```yaml\n")
    assert yaml.safe_load(config.strip("`").removeprefix("yaml\n")) == OmegaConf.to_container(cfg, resolve=True)
    preflight = text_of(plugins, "preflight")
    assert json.loads(preflight.strip("`").removeprefix("json\n")) == json.loads((run_dir / "preflight.json")
                                                                                 .read_text())
    assert "No problems found" in text_of(plugins, "diagnostics") and summary["diagnostics"] == []

    content = plugins.PluginTagToContent("hparams")
    start = hp_metadata.parse_session_start_info_plugin_data(content[hp_metadata.SESSION_START_INFO_TAG])
    # the main knobs only (a sweep job adds its swept keys): the 80-odd other keys would bury them
    expected = {k: v for k, v in select_hparams(flat_hparams(cfg)).items() if v is not None}
    assert set(start.hparams) == set(expected) and {"lr", "reg", "batch_size", "model.hidden_sizes"} <= set(expected)
    assert not any(k.startswith(("diagnostics.", "tensorboard.", "preflight.")) for k in start.hparams)
    for key, value in expected.items():
        got = start.hparams[key]
        if isinstance(value, bool):
            assert got.bool_value == value, key
        elif isinstance(value, str):
            assert got.string_value == value, key
        else:
            assert got.number_value == pytest.approx(value), key
    experiment = hp_metadata.parse_experiment_plugin_data(content[hp_metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAM_METRICS)
    for tag in HPARAM_METRICS:  # each metric has a value for the dashboard
        assert acc.Scalars(tag)
    end = hp_metadata.parse_session_end_info_plugin_data(content[hp_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh"])
def test_unit_fraction_tags_follow_the_activation(tmp_path, activation):
    framework.train(compose("epochs=1", f"model.activation={activation}", "model.hidden_sizes=[20,10]"),
                    run_dir=tmp_path)
    scalars = set(read(tmp_path)[0].Tags()["scalars"])
    kind = "saturated_tanh" if activation == "tanh" else "dead_relu"
    other = "dead_relu" if activation == "tanh" else "saturated_tanh"
    assert {f"{kind}/layer1", f"{kind}/layer2"} <= scalars and not any(t.startswith(other) for t in scalars)


def test_no_first_layer_image_without_image_shape(tmp_path):
    framework.train(compose("epochs=1", "data=spiral"), run_dir=tmp_path)
    acc, _ = read(tmp_path)
    assert acc.Tags()["images"] == [] and "weights/W1" in acc.Tags()["histograms"]


def test_convnet_logs_per_layer_activations_unit_fractions_and_its_filters(tmp_path):
    """A tanh ConvNet with a max pool on digits: an activation histogram per activation layer, saturated_tanh (never
    dead_relu) per layer over channels, and the first convolution's filters as 3x3 tiles under filters/conv1."""
    layers = ("[{type:conv2d,filters:5,size:3,pad:1},tanh,{type:maxpool2d,size:2},{type:affine,units:12},relu,"
              "{type:affine}]")
    cfg = compose("epochs=1", "model=sequential", f"model.layers={layers}", "data=digits")
    spy = Spy()
    framework.train(cfg, run_dir=tmp_path, callbacks=[spy])
    acc, _ = read(tmp_path)
    tags = acc.Tags()
    assert {"activations/layer2_tanh", "activations/layer5_relu"} <= set(tags["histograms"])
    scalars = set(tags["scalars"])
    assert {"saturated_tanh/layer2_tanh", "dead_relu/layer5_relu"} <= scalars
    assert "dead_relu/layer2_tanh" not in scalars and "saturated_tanh/layer5_relu" not in scalars
    run, theta = spy.run, spy.final
    sample = run.data.X_val[:500]
    acts = run.model.activations(theta, sample)["layer2_tanh"].reshape(-1, 5)  # (rows * 64 positions, 5 channels)
    saturated = np.mean((np.abs(acts) > 0.99).mean(axis=0) > 0.5)
    assert acc.Scalars("saturated_tanh/layer2_tanh")[-1].value == pytest.approx(saturated)
    assert tags["images"] == ["filters/conv1"]
    pixels = np.asarray(Image.open(io.BytesIO(acc.Images("filters/conv1")[-1].encoded_image_string)))
    assert pixels.shape == (2 * 4 - 1, 3 * 4 - 1)  # 5 filters: 2 rows of 3 3x3 tiles, 1-pixel grid lines
    W = run.layout.view(theta, "W1")  # (3, 3, 1, 5)
    for f in (0, 4):
        r, c = divmod(f, 3)
        w = W[:, :, 0, f]
        np.testing.assert_array_equal(pixels[r * 4:r * 4 + 3, c * 4:c * 4 + 3],
                                      np.round((w - w.min()) / (w.max() - w.min()) * 255))


@pytest.mark.parametrize("layers, tile", [("[{type: conv2d, filters: 4, size: 5}, relu, {type: affine}]", (5, 5, 3)),
                                           ("[{type: conv1d, filters: 4, size: 5}, relu, {type: affine}]", (3, 5))])
def test_first_filters_tile_colour_images_and_signals(layers, tile):
    """3-channel conv2d filters are colour tiles; conv1d filters are (C, K) tiles, a row per input channel."""
    from framework.layers.sequential import Sequential, SequentialConfig

    model = Sequential(SequentialConfig(layers=yaml.safe_load(layers), input_shape=[3, 8, 8] if len(tile) == 3
                                        else [3, 16]))
    model.setup(3 * 64 if len(tile) == 3 else 48, 4)
    theta = model.init_params(np.random.default_rng(0))
    tag, columns, shape = model.first_filters(theta)
    assert tag == "filters/conv1" and shape == tile and columns.shape == (int(np.prod(tile)), 4)
    W = model.layout.view(theta, "W1")  # (KH, KW, C, F)
    f = 2
    expected = W[:, :, :, f] if len(tile) == 3 else W[0, :, :, f].T  # (5, 5, 3) or (C=3, K=5)
    np.testing.assert_array_equal(columns[:, f].reshape(tile), expected)
    assert tile_images(columns, shape).shape[:2] == (2 * (tile[0] + 1) - 1, 2 * (tile[1] + 1) - 1)


def test_monitoring_does_not_change_training(tmp_path):
    on = framework.train(compose("epochs=2"), run_dir=tmp_path / "on")
    off = framework.train(compose("epochs=2", "tensorboard.enabled=false", "diagnostics.enabled=false",
                                  "monitor.every=0"), run_dir=tmp_path / "off")
    assert on["metrics"] == off["metrics"]
    assert not list((tmp_path / "off").glob("events.out.tfevents.*")) and "diagnostics" not in off
    assert list((tmp_path / "on").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("override, key", [("+tensorboard.histogram_every=-1", "tensorboard.histogram_every"),
                                           ("+tensorboard.sample_rows=0", "tensorboard.sample_rows"),
                                           ("+tensorboard.histogram_bins=2.5", "tensorboard.histogram_bins"),
                                           ("+tensorboard.colour=1", "tensorboard.colour"),
                                           ("+diagnostics.ratio_low=0.1", "diagnostics.ratio_low"),
                                           ("+diagnostics.overfit_gap=2", "diagnostics.overfit_gap")])
def test_bad_options_name_their_key(override, key):
    cfg = compose("epochs=1", override.replace("+", "++"))

    class FakeRun:  # make_callback reads only the config before it builds the callback
        pass

    fake = FakeRun()
    fake.cfg = cfg
    with pytest.raises(ConfigError) as info:
        make_callback(fake)
    assert info.value.key == key


def test_tensorboard_without_diagnostics(tmp_path):
    summary = framework.train(compose("epochs=1", "diagnostics.enabled=false"), run_dir=tmp_path)
    acc, plugins = read(tmp_path)
    assert "diagnostics" not in summary and "diagnostics" not in plugins.PluginTagToContent("text")
    assert "val/acc" in acc.Tags()["scalars"]


def test_make_callback_is_none_when_everything_is_off(tmp_path):
    cfg = compose("epochs=1", "tensorboard.enabled=false", "diagnostics.enabled=false")
    run = framework.Run(cfg, tmp_path)
    assert make_callback(run) is None
    cfg = compose("epochs=1", "tensorboard.enabled=false")
    assert make_callback(framework.Run(cfg, tmp_path)).writer is None


def test_hparams_are_the_main_knobs_plus_the_swept_keys():
    flat = flat_hparams(compose("epochs=2"))
    assert len(flat) > 50  # what every run used to log
    chosen = select_hparams(flat, ["lr=0.01", "optimizer=sgd", "+momentum_schedule=ramp", "data.max_train=50",
                                   "hydra.job.num=3", "~model.keep_prob"])
    # values come from the run's config (the overrides only name the keys)
    assert chosen["lr"] == flat["lr"] == 1e-3 and chosen["optimizer.name"] == "adam"
    assert chosen["data.max_train"] == flat["data.max_train"] and chosen["momentum_schedule"] is None
    assert set(chosen) == set(MAIN_HPARAMS) | {"data.max_train", "momentum_schedule"}
    assert not any(k.startswith(("diagnostics.", "tensorboard.", "checkpoint.")) for k in chosen)
