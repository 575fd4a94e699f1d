"""`Callback`: the hooks a run calls (train start, monitor steps, every step, epoch end, interrupt, train end).

The callbacks every run gets (checkpoints, monitoring) are chosen by the job, `framework.engine.train`.
"""
from __future__ import annotations

# "Run" below names framework.engine.run.Run, which imports this module (so this one does not import it back)


class Callback:
    """Hooks into a run. Every method receives the Run; none may change the numbers of training."""

    def on_train_start(self, run: "Run") -> None: ...
    def on_monitor(self, run: "Run") -> None: ...  # after an update at a monitor step (norms are fresh)
    def on_step(self, run: "Run") -> None: ...  # after every step, only for callbacks in run.step_callbacks
    def on_epoch_end(self, run: "Run") -> None: ...
    def on_interrupt(self, run: "Run") -> None: ...  # a signal stopped the loop at a safe point (maybe mid-epoch)
    def on_train_end(self, run: "Run") -> None: ...  # also on divergence or failure (see run.status)
