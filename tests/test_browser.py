"""A real TensorBoard on two real runs, checked through its data endpoints and in headless Chromium.

Set FRAMEWORK_SCREENSHOT_DIR to keep the screenshot of the scalars page (docs/tensorboard_scalars.png is made
from it). Needs Debian's chromium (`apt-get install chromium`); skipped where it is absent. Everything stays on
127.0.0.1 and every process started here is ended, by its process group, when the test ends.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import framework
from conftest import compose_config

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUNS = {"runs/lr1e-3": "lr=1e-3", "runs/lr3e-3": "lr=3e-3"}
SCALARS = ["train/loss", "train/acc", "val/loss", "val/acc", "train/loss_iter", "val/ema_acc", "lr", "momentum",
           "update_ratio/W1", "grad_norm/W2", "param_norm/b1", "dead_relu/layer1", "best_val_acc", "test_acc"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
STARTUP_S = 90  # TensorBoard answers within a few seconds; a loaded 2-core CI machine gets more


def compose(*overrides):
    """The real config without pre-flight and checkpoints, plus `overrides`."""
    return compose_config("preflight=off", "checkpoint=null", *overrides)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, body: dict | None = None, timeout: float = 10.0):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def stop(process: subprocess.Popen) -> None:
    """End a process started with start_new_session=True and all its children (its process group)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # leftovers of the group (chromium's renderers)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


class Chromium:
    """Headless Chromium driven over --remote-debugging-pipe: DevTools commands as NUL-terminated JSON on its
    fd 3, replies on its fd 4. (--dump-dom cannot see the scalars dashboard, which lives in shadow DOM, and a
    fixed --virtual-time-budget screenshot may catch the charts before they are drawn; here we wait for them.)"""

    def __init__(self, profile: Path):
        commands_in, self._commands = os.pipe()
        self._replies, replies_out = os.pipe()

        def child_fds():  # runs in the child before exec: put the pipe ends on fds 3 and 4
            a = fcntl.fcntl(commands_in, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(replies_out, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.process = subprocess.Popen(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                         "--remote-debugging-pipe", "about:blank"],
                                        preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(commands_in)
        os.close(replies_out)
        self._buffer, self._id, self.session = b"", 0, None

    def call(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:  # anything else is an event
                    assert "error" not in reply, f"{method}: {reply['error']}"
                    return reply["result"]
            ready, _, _ = select.select([self._replies], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"chromium did not answer {method} within {timeout} s"
            chunk = os.read(self._replies, 1 << 20)
            assert chunk, "chromium closed its DevTools pipe"
            self._buffer += chunk

    def open(self, url: str) -> None:
        """A new 1400x900 tab on url; later calls go to it."""
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 900, "deviceScaleFactor": 1,
                                                         "mobile": False})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")  # None while the page is not ready for the expression

    def wait_for(self, expression: str, done, timeout: float = 90.0):
        """Evaluate until done(value) holds; returns the value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value is not None and done(value):
                return value
            assert time.monotonic() < deadline, f"the page never satisfied the check; last value: {value!r:.300}"
            time.sleep(0.25)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"]))

    def close(self) -> None:
        os.close(self._commands)  # chromium exits when its pipe closes
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        stop(self.process)
        os.close(self._replies)


# the text of the page including shadow roots, and the number of drawn chart lines (SVG path.line with data)
DEEP_TEXT = """(() => { const out = []; const walk = (n) => { if (n.shadowRoot) walk(n.shadowRoot);
  for (const c of n.childNodes) { if (c.nodeType === Node.TEXT_NODE) out.push(c.textContent);
    else if (c.tagName !== 'STYLE' && c.tagName !== 'SCRIPT') walk(c); } };
  walk(document.documentElement); return out.join(' ').replace(/\\s+/g, ' '); })()"""
DRAWN_LINES = """(() => { let k = 0; const walk = (n) => { if (n.shadowRoot) walk(n.shadowRoot);
  for (const c of n.children) { if (c.tagName === 'path' && c.classList.contains('line')
      && (c.getAttribute('d') || '').length > 20) k++; walk(c); } };
  walk(document.documentElement); return k; })()"""


@pytest.fixture
def tensorboard_url(tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): the browser test is skipped")
    outputs = tmp_path / "outputs"
    for name, override in RUNS.items():
        framework.train(compose(override, "monitor.every=10"), run_dir=outputs / name)
    port = free_port()
    log = open(tmp_path / "tensorboard.log", "wb")
    # a relative logdir: the page shows "outputs", as for a user, not this machine's temporary path
    process = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), "--logdir", "outputs",
                                "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:  # until it answers and has read both runs
            assert process.poll() is None, (tmp_path / "tensorboard.log").read_text()
            try:
                if sorted(fetch(f"{url}/data/runs", timeout=2)) == sorted(RUNS):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            assert time.monotonic() < deadline, "TensorBoard did not list the runs in time"
            time.sleep(0.5)
        yield url
    finally:
        stop(process)
        log.close()


def test_tensorboard_shows_the_runs(tensorboard_url, tmp_path):
    url = tensorboard_url
    # the data endpoints behind each dashboard list every run's tags
    scalars = fetch(f"{url}/data/plugin/scalars/tags")
    histograms = fetch(f"{url}/data/plugin/histograms/tags")
    images = fetch(f"{url}/data/plugin/images/tags")
    texts = fetch(f"{url}/data/plugin/text/tags")
    for run in RUNS:
        assert set(SCALARS) <= set(scalars[run]), run
        assert {"activations/layer1", "weights/W1", "gradients/W1"} <= set(histograms[run])
        assert "first_layer" in images[run]
        assert {"config", "diagnostics"} <= set(texts[run])
    # the HParams dashboard: one session per run, its lr and its metrics
    experiment = fetch(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
    assert "lr" in {h["name"] for h in experiment["hparamInfos"]}
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} == {"val/acc", "best_val_acc", "test_acc"}
    groups = fetch(f"{url}/data/plugin/hparams/session_groups",
                   {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN"],
                    "colParams": [{"hparam": "lr"}, {"metric": {"tag": "best_val_acc"}}],
                    "startIndex": 0, "sliceSize": 10})
    sessions = {s["name"]: g for g in groups["sessionGroups"] for s in g["sessions"]}
    assert set(sessions) == set(RUNS)
    assert sorted(g["hparams"]["lr"] for g in sessions.values()) == [1e-3, 3e-3]
    assert all(0.5 < g["metricValues"][0]["value"] <= 1 for g in sessions.values())

    # the scalars dashboard in a browser: every train/val tag of both runs, with their charts drawn
    tags = ["train/loss", "train/acc", "train/loss_iter", "val/loss", "val/acc", "val/ema_acc"]
    shot = tmp_path / "tensorboard_scalars.png"
    browser = Chromium(tmp_path / "profile")
    try:
        browser.open(f"{url}/#scalars&tagFilter=(train%7Cval)%2F")
        text = browser.wait_for(DEEP_TEXT, lambda t: all(tag in t for tag in tags + list(RUNS)))
        assert "tag: train/loss_iter" in text and "tag: val/ema_acc" in text
        # one raw and one smoothed line per run and chart
        browser.wait_for(DRAWN_LINES, lambda n: n >= 2 * len(RUNS) * len(tags))
        time.sleep(0.5)  # let the last chart finish its transition
        browser.screenshot(shot)
    finally:
        browser.close()
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (900, 1400, 3)
    # a page with charts, not a blank or loading one: TensorBoard's orange header, and below it the two runs'
    # lines in two strong colours (one warm, one cool) among the grey grid and labels
    assert np.mean(np.all(np.abs(pixels[5:50].astype(int) - [245, 124, 0]) < 40, axis=-1)) > 0.5
    charts = pixels[150:, 350:].reshape(-1, 3).astype(int)
    strong = charts[charts.max(axis=1) - charts.min(axis=1) > 120]
    assert np.sum(strong[:, 0] > strong[:, 2]) > 300 and np.sum(strong[:, 2] > strong[:, 0]) > 300
    target = os.environ.get("FRAMEWORK_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(target) / shot.name)
