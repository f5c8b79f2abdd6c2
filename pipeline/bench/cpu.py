"""CPU seconds of this machine's Ray actor processes, by kind, over a time window.

A sampler thread reads `psutil` CPU times (user + system) of every process whose title
(Ray sets it to ``ray::<Class>[.<method>]``) names a kind's actor class, every ``period_s``;
`cpu_between(kind, t0, t1)` interpolates each process's counter at both ends (a process
seen only inside the window counts from its first sample). Used by `bench pipeline` to
show where a 2-core machine's CPU goes: the reader actors' decode/crop work or the train
workers' steps.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left

import psutil

KINDS = {"reader": ("ray::ShardReader",), "trainer": ("ray::RayTrainWorker",)}


class CpuSampler:
    def __init__(self, kinds: dict[str, tuple[str, ...]] | None = None,
                 period_s: float = 0.25) -> None:
        self.kinds = kinds or KINDS
        self.period_s = period_s
        self.series: dict[tuple[int, float], tuple[str, list[tuple[float, float]]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _kind(self, title: str) -> str | None:
        for kind, prefixes in self.kinds.items():
            if any(title == p or title.startswith((p + ".", p + " ")) for p in prefixes):
                return kind
        return None

    def sample(self) -> None:
        """One sample of every matching process (time.time() seconds, CPU seconds)."""
        now = time.time()
        for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
            try:
                cmd = p.info["cmdline"] or []
                kind = self._kind(" ".join(cmd)) if cmd else None
                if kind is None:
                    continue
                t = p.cpu_times()
                key = (p.info["pid"], p.info["create_time"])
                self.series.setdefault(key, (kind, []))[1].append((now, t.user + t.system))
            except psutil.Error:
                continue

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period_s)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def cpu_between(self, kind: str, t0: float, t1: float) -> float:
        """CPU seconds the processes of `kind` used between wall times t0 < t1."""
        total = 0.0
        for k, points in self.series.values():
            if k != kind or not points or points[-1][0] < t0 or points[0][0] > t1:
                continue
            total += _at(points, t1) - _at(points, t0)
        return total

    def processes(self, kind: str) -> int:
        return sum(1 for k, _ in self.series.values() if k == kind)


def _at(points: list[tuple[float, float]], t: float) -> float:
    """The counter at wall time t, linear between samples, clamped at both ends."""
    times = [p[0] for p in points]
    i = bisect_left(times, t)
    if i == 0:
        return points[0][1]
    if i == len(points):
        return points[-1][1]
    (ta, ca), (tb, cb) = points[i - 1], points[i]
    return ca + (cb - ca) * (t - ta) / max(tb - ta, 1e-9)
