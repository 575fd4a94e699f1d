"""Models from layers: the LAYERS registry's built-in layers (builtin.py, on the kernels of kernels_*.py), layer
specs and shape inference (spec.py), the generated forward/loss/backward step (step.py) and the models
`sequential`, `convnet` and `cnn1d` (sequential.py). A user layer subclasses `Layer` and registers with
`@LAYERS.register(name, config=...)` like any plugin."""
from framework.core.registry import LAYERS
from . import builtin  # noqa: F401  (registers the built-in layers)
from . import augment  # noqa: F401  (registers random_shift and random_flip)
from .sequential import Sequential, SequentialConfig
from .spec import Layer, Names, init_weights

__all__ = ["LAYERS", "Layer", "Names", "Sequential", "SequentialConfig", "init_weights"]
