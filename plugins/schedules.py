"""Learning-rate (and momentum) schedules of the notes (4.4)."""
from __future__ import annotations

from dataclasses import dataclass

from framework import SCHEDULES, Schedule, ScheduleConfig


@dataclass
class ConstantConfig(ScheduleConfig):
    pass


@SCHEDULES.register("constant", config=ConstantConfig)
class Constant(Schedule):
    """The base value at every step (after the optional warm-up)."""
