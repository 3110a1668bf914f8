"""Fast scalar random draws for scene planning and task making."""
from __future__ import annotations

import math
from typing import MutableSequence, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


class Draws:
    """Scalar draws from a numpy `Generator`, fetched in blocks.

    A scene makes a few hundred small random choices; numpy's per-call overhead (microseconds per
    `rng.integers`, tens for `rng.choice(p=...)`) would cost more than drawing the scene. Every draw
    here is derived from `rng.random()` blocks, so it stays a pure function of the generator's seed.
    """

    def __init__(self, rng: np.random.Generator, block: int = 256):
        self.rng = rng
        self._block = block
        self._values: list[float] = []
        self._next = 0
        self._spare_normal: float | None = None

    def random(self) -> float:
        """Uniform in [0, 1)."""
        if self._next == len(self._values):
            self._values = self.rng.random(self._block).tolist()
            self._next = 0
        value = self._values[self._next]
        self._next += 1
        return value

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def integer(self, low: int, high: int | None = None) -> int:
        """Uniform integer in [low, high) (or [0, low) with one argument), as `Generator.integers`."""
        if high is None:
            low, high = 0, low
        if high <= low:
            raise ValueError(f"empty integer range [{low}, {high})")
        return min(high - 1, low + int(self.random() * (high - low)))

    def chance(self, probability: float) -> bool:
        return self.random() < probability

    def choice(self, items: Sequence[T]) -> T:
        return items[self.integer(len(items))]

    def weighted_index(self, weights: Sequence[float]) -> int:
        total = float(sum(weights))
        target = self.random() * total
        running = 0.0
        for i, weight in enumerate(weights):
            running += weight
            if target < running:
                return i
        return max(i for i, weight in enumerate(weights) if weight > 0)

    def sample(self, items: Sequence[T], count: int) -> list[T]:
        """`count` distinct items in random order."""
        pool = list(items)
        if count > len(pool):
            raise ValueError(f"cannot sample {count} of {len(pool)} items")
        for i in range(count):
            j = self.integer(i, len(pool))
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:count]

    def shuffle(self, items: MutableSequence[T]) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.integer(i + 1)
            items[i], items[j] = items[j], items[i]

    def normal(self, mean: float = 0.0, std: float = 1.0) -> float:
        # Box-Muller makes two independent normals; the second is kept for the next call.
        if self._spare_normal is None:
            radius = math.sqrt(-2.0 * math.log(1.0 - self.random()))  # 1 - random() is in (0, 1]
            angle = 2 * math.pi * self.random()
            self._spare_normal = radius * math.sin(angle)
            value = radius * math.cos(angle)
        else:
            value, self._spare_normal = self._spare_normal, None
        return mean + std * value

    def poisson(self, mean: float) -> int:
        if mean <= 0:
            return 0
        if mean > 30:
            return max(0, round(self.normal(mean, math.sqrt(mean))))
        # Knuth's multiplication method: fine for the small means used here.
        limit, count, product = math.exp(-mean), 0, self.random()
        while product > limit:
            count += 1
            product *= self.random()
        return count
