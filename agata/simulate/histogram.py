"""A latency histogram in bounded memory: log-spaced buckets, 1 % wide.

A run of thousands of devices makes hundreds of thousands of requests; keeping every
sample would do, but a histogram costs the same whatever the run's length and merges
by adding counts. A quantile is the upper edge of the bucket it falls in (capped at the
largest sample seen), so it overstates the true value by at most 1 %.
"""

from __future__ import annotations

import math

__all__ = ["LatencyHistogram"]

#: Width of a bucket: each one ends 1 % above where it starts.
RATIO = 1.01
_LOG_RATIO = math.log(RATIO)
#: Everything at or below 10 µs shares bucket 0.
FLOOR = 1e-5


class LatencyHistogram:
    """Durations in seconds: count, mean, min, max and quantiles (within 1 %)."""

    __slots__ = ("_buckets", "count", "maximum", "minimum", "total")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = 0.0

    def record(self, seconds: float) -> None:
        """Add one duration (negative values count as zero)."""
        seconds = max(0.0, seconds)
        index = 0 if seconds <= FLOOR else int(math.log(seconds / FLOOR) / _LOG_RATIO) + 1
        self._buckets[index] = self._buckets.get(index, 0) + 1
        self.count += 1
        self.total += seconds
        self.minimum = min(self.minimum, seconds)
        self.maximum = max(self.maximum, seconds)

    def merge(self, other: LatencyHistogram) -> None:
        """Add every sample of ``other`` to this histogram."""
        for index, n in other._buckets.items():
            self._buckets[index] = self._buckets.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0 < q <= 1) in seconds; NaN when empty."""
        if not 0 < q <= 1:
            raise ValueError(f"quantile must be in (0, 1], not {q}")
        if self.count == 0:
            return math.nan
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                upper = FLOOR * RATIO**index
                return max(self.minimum, min(upper, self.maximum))
        return self.maximum  # unreachable: the counts add up to count

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def summary_ms(self) -> dict[str, float | int | None]:
        """Count and p50/p95/p99/max/mean in milliseconds (None when empty)."""

        def ms(value: float) -> float | None:
            return None if math.isnan(value) else round(value * 1000, 3)

        return {
            "count": self.count,
            "p50_ms": ms(self.quantile(0.50)) if self.count else None,
            "p95_ms": ms(self.quantile(0.95)) if self.count else None,
            "p99_ms": ms(self.quantile(0.99)) if self.count else None,
            "max_ms": ms(self.maximum) if self.count else None,
            "mean_ms": ms(self.mean),
        }
