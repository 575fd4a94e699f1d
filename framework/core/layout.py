"""All parameters of a model live in one contiguous vector; a Layout names its blocks (W1, b1, ...)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Block:
    name: str
    offset: int
    shape: tuple
    decay: bool  # regularizers apply to this block (weights yes, biases no by default)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def stop(self) -> int:
        return self.offset + self.size


class Layout:
    """Ordered named blocks over a flat vector of `size` parameters (P)."""

    def __init__(self, blocks: list[tuple[str, tuple, bool]]):
        out, offset = [], 0
        for name, shape, decay in blocks:
            block = Block(name, offset, tuple(int(s) for s in shape), bool(decay))
            out.append(block)
            offset = block.stop
        self.blocks: tuple[Block, ...] = tuple(out)
        self.size = offset
        self._by_name = {b.name: b for b in self.blocks}
        if len(self._by_name) != len(self.blocks):
            raise ValueError("duplicate block names in layout")

    def __getitem__(self, name: str) -> Block:
        return self._by_name[name]

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self):
        return len(self.blocks)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def view(self, vec: np.ndarray, name: str) -> np.ndarray:
        """The block `name` of `vec` as a view with its shape (writes go to `vec`)."""
        b = self._by_name[name]
        return vec[b.offset:b.stop].reshape(b.shape)

    def views(self, vec: np.ndarray) -> dict[str, np.ndarray]:
        return {b.name: self.view(vec, b.name) for b in self.blocks}

    def decay_mask(self, dtype=np.float64, include_all: bool = False) -> np.ndarray:
        """(P,) vector: 1 where regularization applies, 0 elsewhere."""
        mask = np.zeros(self.size, dtype=dtype)
        for b in self.blocks:
            if b.decay or include_all:
                mask[b.offset:b.stop] = 1
        return mask

    def bounds(self) -> np.ndarray:
        """(B, 2) int64 array of [offset, stop) per block, for kernels that loop over blocks."""
        return np.array([[b.offset, b.stop] for b in self.blocks], dtype=np.int64).reshape(-1, 2)

    def describe(self) -> list[dict]:
        return [{"name": b.name, "offset": b.offset, "shape": list(b.shape), "decay": b.decay} for b in self]

    def __eq__(self, other):
        return isinstance(other, Layout) and self.blocks == other.blocks

    def __repr__(self):
        inner = ", ".join(f"{b.name}{list(b.shape)}" for b in self.blocks)
        return f"Layout({inner}; P={self.size})"
