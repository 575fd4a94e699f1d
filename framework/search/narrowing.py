"""Coarse to fine (notes 5.7): narrow, the next stage's space around the best trials of the previous stage."""
from __future__ import annotations

import math
from dataclasses import replace

from framework.search.space import Param, round_sig


def narrow(space: list[Param], top: list[dict], margin: float = 0.25, min_width: float = 0.1) -> list[Param]:
    """The next stage's space around the best trials of the previous one.

    space: the original (widest) space; top: the params dicts of the best trials (those that finished ok).
    Each numeric range becomes the span of the top trials' values in its scale (log10 for log parameters),
    widened by `margin` x span on each side and to at least `min_width` x the original width, then shifted to lie
    inside the original range. Choices keep all their options. With no trial in `top` the space is unchanged.
    """
    if not top:
        return list(space)
    out = []
    for p in space:
        values = [t[p.name] for t in top if t.get(p.name) is not None]
        if not p.numeric or not values or p.low == p.high:
            out.append(p)
            continue
        units = [p.to_unit(v) for v in values]
        lo, hi = min(units), max(units)
        width = min(1.0, max((hi - lo) * (1.0 + 2.0 * margin), min_width))
        a = (lo + hi) / 2.0 - width / 2.0
        a = min(max(a, 0.0), 1.0 - width)
        low, high = p.from_unit(a), p.from_unit(a + width)
        if p.kind == "int":  # outward onto the original grid
            low = int(p.low + p.step * math.floor((low - p.low) / p.step + 1e-9))
            high = int(p.low + p.step * math.ceil((high - p.low) / p.step - 1e-9))
            low, high = max(low, p.low), min(high, p.high)
        else:
            rl, rh = round_sig(low, p.digits), round_sig(high, p.digits)
            if rl < rh:
                low, high = rl, rh
            low, high = max(low, p.low), min(high, p.high)
        out.append(replace(p, low=low, high=high))
    return out
