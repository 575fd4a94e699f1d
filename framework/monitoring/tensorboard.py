"""A small TensorBoard event writer on the `tensorboard` package alone (no TensorFlow, no tensorboardX).

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, serialized `Event` proto,
masked CRC-32C of the data); TensorBoard reads every `events.out.tfevents.<time>.<host>.<pid>.<n>` file in a
run directory. Each EventWriter creates a new such file (the pid and a per-process counter keep writers apart,
exclusive creation makes sure), which makes a run directory appendable: a resumed run adds its file next to the
first one and TensorBoard reads both. Scalars are plain `simple_value`s, histograms hand-built
`HistogramProto`s and images PNG `Summary.Image`s (the forms TensorBoard's legacy EventAccumulator and its data
server both read); text and hparams use the plugins' `*_pb` helpers and metadata.

Why not tensorboard's EventFileWriter: it hands every record to a background thread that reopens the file for
each record and checksums it in pure Python (~0.2 us a byte): with one record per training iteration that costs
about as much as the iteration itself, and the thread competes with training for the GIL. Here records are
checksummed by a jitted kernel and buffered in the training thread; the monitor flushes at every epoch end.
tests/test_tensorboard.py reads every kind of event back through tensorboard's own readers, which verify the
checksums.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import pathlib
import socket
import struct
import time

import numpy as np

from framework.kernels.dense import jit

HPARAM_TYPES = (bool, int, float, str)
# The knobs every run shows in the HParams dashboard (notes 5.1); a sweep adds the keys it varies. The other
# config keys (diagnostics.*, tensorboard.*, ...) stay in summary.json and the `config` text only: logged as
# hyperparameters they would bury the few that were searched.
MAIN_HPARAMS = ("lr", "reg", "batch_size", "epochs", "seed", "dtype", "optimizer.name", "model.name",
                "model.hidden_sizes", "model.activation", "model.keep_prob", "regularizer.name", "schedule.name",
                "data.name", "ema.decay")
_file_numbers = itertools.count()  # tells apart the files one process opens within one second


def select_hparams(flat: dict, overrides=()) -> dict:
    """The hyperparameters a run logs to the HParams dashboard: MAIN_HPARAMS plus the keys of the command-line
    `overrides` (a sweep job's, e.g. ["lr=0.01", "optimizer=sgd", "+momentum_schedule=ramp"]: a group choice
    logs as <group>.name), taken from `flat` ({dotted key: value}, train.flat_hparams of the run's config)."""
    keys = list(MAIN_HPARAMS)
    for text in overrides:
        key = str(text).partition("=")[0].lstrip("+~")
        if key.startswith("hydra.") or key == "hydra":
            continue
        if key not in flat and f"{key}.name" in flat:
            key = f"{key}.name"
        keys.append(key)
    return {k: flat[k] for k in dict.fromkeys(keys) if k in flat}

# the hparams plugin's tags (tensorboard.plugins.hparams.metadata)
HPARAMS_EXPERIMENT_TAG = "_hparams_/experiment"
HPARAMS_SESSION_START_TAG = "_hparams_/session_start_info"
HPARAMS_SESSION_END_TAG = "_hparams_/session_end_info"


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG file of 8-bit pixels (H, W) grey or (H, W, 3) RGB: signature, IHDR, one zlib IDAT of the rows (each
    with filter byte 0), IEND. Written here because importing Pillow costs a run ~0.1-0.2 s for one small image."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = pixels.shape[:2]
    color = 0 if pixels.ndim == 2 else 2  # PNG colour types: 0 grey, 2 RGB
    rows = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


# --- record checksums ---
def _crc32c_table() -> np.ndarray:
    """(256,) uint32 lookup table of CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


CRC32C_TABLE = _crc32c_table()


@jit
def crc32c_kernel(data, table):
    """CRC-32C of data (n,) uint8 with the (256,) uint32 table; returns it as int64."""
    crc = np.uint32(0xFFFFFFFF)
    for i in range(data.size):
        crc = table[(crc ^ data[i]) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
    return np.int64(crc ^ np.uint32(0xFFFFFFFF))


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C of a TFRecord's length or data bytes."""
    x = int(crc32c_kernel(np.frombuffer(data, dtype=np.uint8), CRC32C_TABLE))
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventWriter:
    """Appends summaries for one run directory `logdir` to a new event file (`self.path`).

    Events are buffered: `flush()` puts them on disk (a TensorBoard that is watching sees them then), `close()`
    flushes and closes. Steps are integers (epochs or iterations, per tag); wall times are seconds since the epoch.
    """

    def __init__(self, logdir):
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        logdir = pathlib.Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        while True:
            # TensorBoard reads a run's files in name order: pad the counter so writer 10 sorts after writer 9
            name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                    f"{next(_file_numbers):06d}")
            try:
                self._file = open(logdir / name, "xb", buffering=1 << 16)  # never another writer's file
                break
            except FileExistsError:
                continue
        self.path = logdir / name
        self.closed = False
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2",
                                       source_metadata=event_pb2.SourceMetadata(writer="framework.tensorboard")))

    def add_event(self, event) -> None:
        """Append one `Event` proto as a TFRecord."""
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(b"".join((header, struct.pack("<I", masked_crc32c(header)), data,
                                   struct.pack("<I", masked_crc32c(data)))))

    # --- events ---
    def add_summary(self, summary, step: int, wall_time: float | None = None) -> None:
        """Write a `Summary` proto as one event at `step`."""
        self.add_event(self._event_pb2.Event(wall_time=time.time() if wall_time is None else wall_time,
                                             step=int(step), summary=summary))

    def scalars(self, values: dict, step: int, wall_time: float | None = None) -> None:
        """Scalars {tag: number} at one step, in one event; non-finite values are skipped (TensorBoard would
        draw NaN as a gap anyway, and an inf flattens every chart)."""
        summary = self._summary_pb2.Summary()
        for tag, value in values.items():
            value = float(value)
            if math.isfinite(value):
                summary.value.add(tag=tag, simple_value=value)
        if summary.value:
            self.add_summary(summary, step, wall_time)

    def scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        self.scalars({tag: value}, step, wall_time)

    def scalar_series(self, tag: str, values, first_step: int, wall_time: float | None = None) -> None:
        """values[i] at step first_step + i (e.g. the per-iteration losses of an epoch)."""
        # one event reused (add_event serializes it at once): building one per value costs more than a step
        event = self._event_pb2.Event(wall_time=time.time() if wall_time is None else wall_time)
        entry = event.summary.value.add(tag=tag)
        for i, value in enumerate(np.asarray(values, dtype=np.float64).ravel().tolist()):
            if math.isfinite(value):
                event.step = first_step + i
                entry.simple_value = value
                self.add_event(event)

    def histogram(self, tag: str, values, step: int, bins: int = 30) -> None:
        """Histogram of the finite entries of `values` (any shape) in `bins` equal-width buckets."""
        data = np.asarray(values, dtype=np.float64).ravel()
        data = data[np.isfinite(data)]
        if data.size == 0:
            return
        lo, hi = float(data.min()), float(data.max())
        if lo == hi:
            limits, counts = [hi], [float(data.size)]
        else:  # equal-width buckets as np.histogram draws them, counted 2x faster (bincount, no edge fixups)
            index = np.minimum(((data - lo) * (bins / (hi - lo))).astype(np.intp), bins - 1)
            counts = np.bincount(index, minlength=bins).astype(np.float64).tolist()
            limits = (lo + (hi - lo) * np.arange(1, bins + 1) / bins).tolist()
            limits[-1] = hi
        # bucket i spans (limit[i-1], limit[i]]; TensorBoard takes min as the first left edge
        histo = self._summary_pb2.HistogramProto(min=lo, max=hi, num=float(data.size), sum=float(data.sum()),
                                                 sum_squares=float(np.dot(data, data)), bucket_limit=limits,
                                                 bucket=counts)
        summary = self._summary_pb2.Summary()
        summary.value.add(tag=tag, histo=histo)
        self.add_summary(summary, step)

    def image(self, tag: str, image, step: int) -> None:
        """An image (H, W) grey or (H, W, 3) RGB: uint8, or floats in [0, 1] (clipped). Stored as PNG."""
        pixels = np.asarray(image)
        if pixels.dtype != np.uint8:
            pixels = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
        if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3)):
            raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {pixels.shape}")
        if pixels.ndim == 3 and pixels.shape[2] == 1:
            pixels = pixels[:, :, 0]
        height, width = pixels.shape[:2]
        encoded = self._summary_pb2.Summary.Image(height=height, width=width,
                                                  colorspace=1 if pixels.ndim == 2 else 3,
                                                  encoded_image_string=png_bytes(pixels))
        summary = self._summary_pb2.Summary()
        summary.value.add(tag=tag, image=encoded)
        self.add_summary(summary, step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        """A Markdown text (the text dashboard renders it)."""
        # the bytes summary_v2.text_pb makes, without its tensor_util (which imports a TensorFlow stub: ~0.2 s)
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.plugins.text import metadata

        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                        string_val=[markdown.encode("utf-8")])
        summary = self._summary_pb2.Summary()
        summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(display_name=None, description=None),
                          tensor=tensor)
        self.add_summary(summary, step)

    def hparams(self, hparams: dict, metrics: list[str], start_time: float | None = None) -> None:
        """This run's hyperparameters {name: bool|int|float|str} (other values are dropped) and the scalar
        tags that the HParams dashboard shows as its metrics (their last logged values).

        The experiment config gives each hyperparameter a type but no domain: TensorBoard takes the config of
        one run for the whole logdir, and a domain holding only this run's value would hide the other runs of
        a sweep."""
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        values = {k: v for k, v in hparams.items() if isinstance(v, HPARAM_TYPES)
                  and not (isinstance(v, float) and not math.isfinite(v))}
        start = time.time() if start_time is None else start_time
        kinds = {bool: api_pb2.DATA_TYPE_BOOL, str: api_pb2.DATA_TYPE_STRING}
        experiment = api_pb2.Experiment(
            time_created_secs=start,
            hparam_infos=[api_pb2.HParamInfo(name=k, type=kinds.get(type(v), api_pb2.DATA_TYPE_FLOAT64))
                          for k, v in sorted(values.items())],
            metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics])
        self._hparams_event(HPARAMS_EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment), 0)
        # the session start that hparams.summary_v2.hparams_pb writes (same bytes; see _hparams_event)
        group = hashlib.sha256(json.dumps(values, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()
        info = plugin_data_pb2.SessionStartInfo(group_name=group, start_time_secs=start)
        for name in sorted(values):
            value = values[name]
            if isinstance(value, bool):
                info.hparams[name].bool_value = value
            elif isinstance(value, (int, float)):
                info.hparams[name].number_value = value
            else:
                info.hparams[name].string_value = value
        self._hparams_event(HPARAMS_SESSION_START_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=info), 0)

    def session_end(self, ok: bool, step: int = 0) -> None:
        """Mark the hparams session finished: success, or failure (diverged/failed runs in a sweep)."""
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        info = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS if ok else api_pb2.STATUS_FAILURE,
                                              end_time_secs=time.time())
        self._hparams_event(HPARAMS_SESSION_END_TAG,
                            plugin_data_pb2.HParamsPluginData(session_end_info=info), step)

    def _hparams_event(self, tag: str, plugin_data, step: int) -> None:
        """What hparams.metadata.create_summary_metadata and its NULL_TENSOR make (tests compare the bytes),
        built here because that module imports tensor_util and with it a TensorFlow stub (~0.2 s a run)."""
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

        content = type(plugin_data)()
        content.CopyFrom(plugin_data)
        content.version = 0  # the hparams plugin's data version
        pb = self._summary_pb2
        meta = pb.SummaryMetadata(plugin_data=pb.SummaryMetadata.PluginData(plugin_name="hparams",
                                                                             content=content.SerializeToString()))
        empty = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=0)]))
        summary = pb.Summary()
        summary.value.add(tag=tag, tensor=empty, metadata=meta)
        self.add_summary(summary, step)

    # --- lifetime ---
    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self.closed:
            self._file.close()
            self.closed = True

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tile_images(columns: np.ndarray, image_shape: tuple, max_tiles: int = 256, pad: int = 1) -> np.ndarray:
    """Tile the columns of a (D, H) weight matrix as H images of `image_shape` ((h, w) or (h, w, 3), D = h*w*c)
    in a near-square grid. Each tile is min-max normalised on its own (its contrast, not its scale, shows the
    pattern); grid lines are 0.5 grey. Returns floats in [0, 1] of shape (rows*(h+pad)-pad, cols*(w+pad)-pad[, 3]).
    At most `max_tiles` columns are shown (the first ones)."""
    W = np.asarray(columns, dtype=np.float64)
    shape = tuple(int(s) for s in image_shape)
    if W.ndim != 2 or int(np.prod(shape)) != W.shape[0]:
        raise ValueError(f"weights of shape {W.shape} do not hold images of shape {shape}")
    n = min(W.shape[1], max_tiles)
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    h, w = shape[:2]
    tiles = W[:, :n].T.reshape((n,) + shape)
    lo = tiles.min(axis=tuple(range(1, tiles.ndim)), keepdims=True)
    span = tiles.max(axis=tuple(range(1, tiles.ndim)), keepdims=True) - lo
    tiles = np.where(span > 0, (tiles - lo) / np.where(span > 0, span, 1.0), 0.5)  # a constant tile is mid grey
    # (rows*cols, h+pad, w+pad[, c]) padded tiles -> (rows, h+pad, cols, w+pad[, c]) -> one image
    grid = np.full((rows * cols, h + pad, w + pad) + shape[2:], 0.5)
    grid[:n, :h, :w] = tiles
    grid = grid.reshape((rows, cols, h + pad, w + pad) + shape[2:]).swapaxes(1, 2)
    grid = grid.reshape((rows * (h + pad), cols * (w + pad)) + shape[2:])
    return grid[:rows * (h + pad) - pad, :cols * (w + pad) - pad]
