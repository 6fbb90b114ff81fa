"""The studio's memory of how fast the engine runs, and how loaded the machine is right now.

Runs record their seconds per core iteration for their work size (megapixels x text branches). A probe, a
fixed few-millisecond matrix workload, is timed around every recorded run and again when an estimate is asked
for: speeds are stored in probe units, so an estimate follows the machine's load both ways without waiting
for the next run (another program starting or stopping beside the studio).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

PROBE_SHAPE = (64, 384)  # [tokens, dim] @ [dim, dim], ten times: about 3 ms on two idle laptop cores
PROBE_REUSE_S = 1.0  # an estimate within this many seconds of the last probe reuses it
SMOOTHING = 0.6  # weight of the newest run against the remembered speed


def matrix_probe() -> float:
    """Seconds for a fixed small GEMM workload at the engine's thread count (median of 3)."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(*PROBE_SHAPE, generator=g)
    b = torch.randn(PROBE_SHAPE[1], PROBE_SHAPE[1], generator=g) / PROBE_SHAPE[1] ** 0.5
    times = []
    with torch.inference_mode():
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(10):
                torch.tanh(a @ b)  # the same normal-sized inputs every time (no denormals)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


class SpeedMemory:
    """Measured seconds per core iteration by work size, and a run's fixed cost, scaled by the load now."""

    def __init__(self, probe: Callable[[], float] = matrix_probe):
        self.probe = probe
        self._per_iteration: dict[float, float] = {}  # work size -> probe units per core iteration
        self._overhead: float | None = None  # probe units per run (text encoding, decoding)
        self._last: tuple[float, float] | None = None  # (when, probe seconds)

    def clear(self) -> None:
        self._per_iteration, self._overhead = {}, None

    @property
    def known(self) -> bool:
        return bool(self._per_iteration)

    def load(self, fresh: bool = False) -> float:
        """The probe's seconds now (re-measured when older than PROBE_REUSE_S, or when `fresh`)."""
        now = time.monotonic()
        if fresh or self._last is None or now - self._last[0] > PROBE_REUSE_S:
            self._last = (now, max(self.probe(), 1e-9))
        return self._last[1]

    def last_load(self) -> float | None:
        """The latest probe without measuring again (for use while a run occupies the machine)."""
        return self._last[1] if self._last is not None else None

    def record(self, units: float, per_iteration: float, overhead: float, load: float) -> None:
        """A finished run: seconds per core iteration at work size `units`, its fixed seconds, and the probe's
        seconds measured around it."""
        key = round(units, 6)
        value, fixed = per_iteration / load, overhead / load
        old = self._per_iteration.get(key)
        self._per_iteration[key] = value if old is None else SMOOTHING * value + (1 - SMOOTHING) * old
        self._overhead = fixed if self._overhead is None else SMOOTHING * fixed + (1 - SMOOTHING) * self._overhead

    def per_iteration(self, units: float, load: float) -> float | None:
        """Seconds per core iteration at work size `units` under `load`; None before any run. Sizes never run
        scale the nearest measured one in proportion to the work."""
        if not self._per_iteration:
            return None
        key = round(units, 6)
        if key in self._per_iteration:
            return self._per_iteration[key] * load
        near = min(self._per_iteration, key=lambda k: abs(math.log(k / key)))
        return self._per_iteration[near] * key / near * load

    def overhead(self, load: float) -> float:
        """Seconds a run spends outside its core iterations under `load` (0 before any run)."""
        return (self._overhead or 0.0) * load
