"""`bench.cpu.CpuSampler`: per-kind CPU seconds of matching processes over a wall window."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipeline.bench.cpu import CpuSampler, _at

pytestmark = pytest.mark.unit


def test_counter_is_interpolated_between_samples_and_clamped_outside() -> None:
    points = [(10.0, 1.0), (12.0, 3.0), (14.0, 3.0)]
    assert _at(points, 11.0) == pytest.approx(2.0)
    assert _at(points, 9.0) == 1.0 and _at(points, 20.0) == 3.0
    s = CpuSampler(kinds={"x": ("never",)})
    s.series = {(1, 0.0): ("x", points), (2, 0.0): ("y", [(10.0, 0.0), (14.0, 9.0)])}
    assert s.cpu_between("x", 11.0, 13.0) == pytest.approx(1.0)
    assert s.cpu_between("x", 0.0, 5.0) == 0.0  # before the process was seen
    assert s.cpu_between("y", 10.0, 14.0) == pytest.approx(9.0)
    assert s.processes("x") == 1


def test_a_busy_process_is_matched_by_title_and_its_cpu_counted() -> None:
    marker = "cpu_sampler_test_busy"  # first on the command line: only this process matches
    code = (f"{marker} = 1; import time; t = time.process_time()\n"
            "while time.process_time() - t < 0.6: pass\ntime.sleep(0.6)")
    with CpuSampler(kinds={"busy": (f"{sys.executable} -c {marker}",)},
                    period_s=0.05) as sampler:
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-c", code])
        proc.wait(timeout=60)
        t1 = time.time()
    ours = [pts for (pid, _), (_, pts) in sampler.series.items() if pid == proc.pid]
    assert ours, "the busy process was never sampled"
    used = sampler.cpu_between("busy", t0, t1)
    assert sampler.processes("busy") == 1
    # it burned 0.6 CPU s in its loop (plus its start-up, partly before the first sample)
    assert 0.45 <= used <= 1.5, used
    assert sampler.cpu_between("busy", t0 - 100, t0 - 50) == 0.0
