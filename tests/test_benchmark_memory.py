"""The CPU memory measure of ``benchmarks/overhead.py`` (issue 17's memory goal): the peak bytes torch's CPU allocator
holds, read from ``torch.profiler``'s memory events. Checked against allocations whose sizes and order are known."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

MIB = 2**20


def load_overhead():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"
    spec = importlib.util.spec_from_file_location("overhead_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_is_the_running_sum_in_time_order():
    peak = load_overhead().peak_allocated_bytes
    # given out of order: in time order the sum runs 4, 8, 4, 12, 4
    assert peak([(3, -4), (1, 4), (4, 8), (2, 4), (5, -8)]) == 12
    assert peak([]) == 0
    assert peak([(1, 5), (2, -5), (3, 3)]) == 5  # the peak, not the final sum


def test_peak_of_profiled_allocations():
    """4 MiB + 4 MiB held together, one freed, then 8 MiB: torch held 12 MiB at most. A tensor allocated before the
    profiler started and freed during it does not lower the count (its free is not reported)."""
    peak = load_overhead().peak_allocated_bytes
    before = torch.empty(2 * MIB, dtype=torch.uint8)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        del before
        a = torch.ones(4 * MIB, dtype=torch.uint8)
        b = torch.ones(4 * MIB, dtype=torch.uint8)
        del a
        c = torch.ones(8 * MIB, dtype=torch.uint8)
        del b, c
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    assert peak(events) == 12 * MIB
