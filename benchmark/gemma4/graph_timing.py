"""Per-launch GPU time of a launch sequence captured in one CUDA graph (shared by the kernel benchmarks).

A kernel of a few microseconds cannot be timed launch by launch from Python: the host's launch overhead is
larger than the kernel. ``graph_time_us`` warms the launches up on a side stream (Triton compiles, autotune and
allocator growth stay outside the capture), captures ``launches`` launches into one graph, replays it once
untimed, then times ``trials`` rounds of ``replays_per_trial`` replays between two CUDA events and returns the
median time per launch in microseconds.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable


def graph_time_us(torch: Any, launch: Callable[[int], Any], launches: int, *, warmup: int = 1,
                  trials: int = 1, replays_per_trial: int = 1) -> float:
    """``launch(i)`` issues the i-th launch (i in 0..launches-1; the warm-up calls i = 0..warmup-1)."""
    for name, value, least in (("launches", launches, 1), ("warmup", warmup, 1), ("trials", trials, 1),
                               ("replays_per_trial", replays_per_trial, 1)):
        if not isinstance(value, int) or value < least:
            raise ValueError(f"graph_time_us: {name} must be an integer >= {least}, got {value!r}")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(warmup):
            launch(i)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(launches):
            launch(i)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(trials):
        start.record()
        for _ in range(replays_per_trial):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / (replays_per_trial * launches))
    del graph
    return statistics.median(times)
