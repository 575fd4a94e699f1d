"""Where a layered workload's step goes: each layer's forward and backward lines of the generated step
(framework.layers.step) timed alone, then their sum, the whole loss_grad (the loss included) and train_epoch's
time per step (the update, L2 and the batch order included).

    python -m benchmarks.layer_profile W5 [float32|float64]

Each section runs `reps` times inside one compiled loop (a call from Python costs about as much as a small
layer), best of 7 rounds, on the buffers the step itself just filled, so its inputs sit in cache as they would
right after the layer before. The sections' sum is below loss_grad's time by what the full step loses to cache
misses between layers. Layers that overwrite their input (in-place ReLU) see the same values again.
"""
from __future__ import annotations

import re
import sys
import tempfile
import textwrap

import numpy as np
from numba import njit

from benchmarks.layered import LAYERED, LayeredWorkload, make_layered_run
from benchmarks.timing import best_call_time

ROUNDS = 7


def sections(body: list[str], kind: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(setup lines, [(title, lines)]) of one generated function's body: the views it sets up, then the lines
    after each '# <layer> <kind>' comment up to the next one (the return excluded)."""
    setup, parts = [], []
    for line in body:
        text = line.strip()
        if text.startswith("# ") and text.endswith(f" {kind}"):
            parts.append((f"{len(parts) + 1} {text[2:]}", []))
        elif text.startswith("return") or text.startswith('"""'):
            continue
        elif parts:
            parts[-1][1].append(line)
        else:
            setup.append(line)
    return setup, parts


def function_body(source: str, name: str) -> list[str]:
    match = re.search(rf"^def {name}\(.*?\n(.*?)(?=^@njit|\Z)", source, re.S | re.M)
    if match is None:
        raise ValueError(f"no function {name} in the generated step")
    return [line for line in match.group(1).splitlines() if line.strip()]


def timing_source(setup: list[str], lines: list[str], name: str) -> str:
    """A jitted function that runs `lines` reps times after the views of `setup`."""
    body = textwrap.indent(textwrap.dedent("\n".join(lines)), "        ")
    return (f"@njit(error_model='numpy')\ndef {name}(theta, grad, X, idx, masks, work, iwork, train, c, reps):\n"
            + "\n".join(setup) + "\n    for _ in range(reps):\n" + body + "\n")


def best_us(fn, *args, reps: int) -> float:
    """us per rep of fn(*args, reps), a compiled loop of reps calls: the best of ROUNDS timed calls."""
    fn(*args, 2)
    return best_call_time(lambda: fn(*args, reps), 1, ROUNDS) / reps * 1e6


def profile(workload: LayeredWorkload, dtype: str = "float32", reps: int = 200,
            steps_per_epoch: int = 20) -> list[tuple[str, float]]:
    """[(section, us)] of a layered workload (benchmarks.layered.LAYERED): every layer's forward and backward,
    the sections' sum, loss_grad and train_epoch per step."""
    with tempfile.TemporaryDirectory(prefix="layer-profile-") as tmp:
        run = make_layered_run(workload, dtype, steps_per_epoch, tmp)
        run.train_epoch()
        model = run.model
        source = model.plan.source()
        module = model.module
        namespace: dict = {}
        exec(source.split("@njit")[0], namespace)  # the generated module's imports
        namespace.update(njit=njit, loss_grad=module.loss_grad)
        forward_setup, forward_parts = sections(function_body(source, "forward"), "forward")
        backward_setup, backward_parts = sections(function_body(source, "backward"), "backward")
        titles, code = [], []
        for kind, setup, parts in (("forward", forward_setup, forward_parts),
                                   ("backward", backward_setup, backward_parts)):
            for title, lines in parts:
                code.append(timing_source(setup, lines, f"section{len(titles)}"))
                titles.append(title)
        code.append("@njit(error_model='numpy')\n"
                    "def whole(theta, grad, X, y, idx, masks, work, iwork, ybatch, c, reps):\n"
                    "    for _ in range(reps):\n"
                    "        loss_grad(theta, grad, X, y, idx, masks, work, iwork, ybatch, c)\n")
        exec("\n".join(code), namespace)
        theta, grad = run.theta, run.grad
        X, y = run.data.X_train, run.data.y_train
        idx = run.perm[:workload.batch].copy()
        work, iwork, masks, ybatch = model._work, model._iwork, model._empty, model._ybatch
        rows = []
        for k, title in enumerate(titles):
            module.loss_grad(theta, grad, X, y, idx, masks, work, iwork, ybatch, model.dims)  # the step's state
            rows.append((title, best_us(namespace[f"section{k}"], theta, grad, X, idx, masks, work, iwork,
                                        np.bool_(True), model.dims, reps=reps)))
        total = sum(t for _, t in rows)
        whole = best_us(namespace["whole"], theta, grad, X, y, idx, masks, work, iwork, ybatch, model.dims, reps=reps)
        def epoch():
            run.cursor = 0
            run.train_epoch()

        step = best_call_time(epoch, 1, ROUNDS) / steps_per_epoch * 1e6
    return rows + [("sections' sum", total), ("loss_grad (forward, loss, backward)", whole),
                   ("train_epoch per step (update, L2, batch order included)", step)]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in LAYERED or (len(argv) > 1 and argv[1] not in ("float32", "float64")):
        print(f"usage: python -m benchmarks.layer_profile {{{','.join(LAYERED)}}} [float32|float64]", file=sys.stderr)
        return 2
    dtype = argv[1] if len(argv) > 1 else "float32"
    rows = profile(LAYERED[argv[0]], dtype)
    width = max(len(title) for title, _ in rows)
    print(f"{LAYERED[argv[0]].label()} {dtype}: us per step, each section alone (best of {ROUNDS} rounds)")
    for title, us in rows:
        print(f"{title:<{width}}  {us:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
