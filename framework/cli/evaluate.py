"""`python -m framework.evaluate [checkpoint=]<path> [npz=<file.npz>] [split=test] [use=raw] [json=false]`: the
accuracy and loss of a checkpoint (or an ensemble file) on a split of its own dataset or on an .npz file.
Arguments: conf/evaluate.yaml, composed with Hydra's compose API (an evaluation writes no folder and no file); the
checkpoint may be given bare. The scoring itself is framework/io/evaluate.py."""
from __future__ import annotations

import json
from dataclasses import dataclass

from framework.cli.args import Spec, run
from framework.core.errors import ConfigError
from framework.core.params import param, section

SPEC = Spec("python -m framework.evaluate", "evaluate",
            "score a checkpoint (or an ensemble file) on the test split of its own dataset or on an .npz file.",
            bare="checkpoint", path_keys=("checkpoint", "npz"))


@dataclass
class EvaluateOptions:
    """conf/evaluate.yaml."""

    checkpoint: str | None = param(None, "checkpoint or ensemble file, run or sweep folder, latest, or a glob")
    npz: str | None = param(None, "an .npz of raw features to score on instead of the checkpoint's dataset")
    split: str = param("test", "which split of the checkpoint's dataset", choices=("test", "val", "train"))
    use: str = param("raw", "which weights of the file", choices=("raw", "ema", "best"))
    json: bool = param(False, "print one JSON object instead of text")


def score(cfg) -> int:
    """Evaluate as `cfg` (conf/evaluate.yaml) says and print the result; the exit code."""
    opts = section(EvaluateOptions, cfg, "", SPEC.prog)
    if not opts.checkpoint:
        raise ConfigError("checkpoint", None, "the path of a checkpoint file, a run or sweep folder, or latest",
                          f"e.g. {SPEC.prog} outputs/runs/latest")
    from framework.io.evaluate import checkpoint_file, evaluate

    result = evaluate(checkpoint_file(opts.checkpoint), opts.npz, opts.split, opts.use)
    if opts.json:
        print(json.dumps(result))
    else:
        print(f"checkpoint: {result['checkpoint']} ({result['model']}, epoch {result['epoch']}, "
              f"step {result['step']})")
        print(f"data: {result['data']}, {result['n']} examples; weights: {result['weights']}")
        print(f"accuracy: {result['accuracy']:.4f}  loss: {result['loss']:.4f}")
    return 0


def main(argv=None) -> int:
    """`python -m framework.evaluate ...` with `argv` (default: the command line); the exit code."""
    return run(SPEC, argv, score)
