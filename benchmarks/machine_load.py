"""How busy the shared machine is: the benchmark scripts time tiny ops, which a
second process on a 2-core box slows 10x to 100x, so they measure and report it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


class CpuMeter:
    """Share of the whole machine's CPU used by other processes since construction:
    (system busy time from /proc/stat - this process's CPU time) / (wall * cpus).
    None when unknown or when less than `min_wall` seconds passed (/proc/stat ticks are 10 ms)."""

    def __init__(self, min_wall: float = 1.0):
        self.min_wall = min_wall
        self.start = self._snap()

    @staticmethod
    def _snap():
        try:
            f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
            busy = (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
        except (OSError, ValueError, IndexError):
            busy = None
        t = os.times()
        return busy, t.user + t.system, time.perf_counter()

    def others_share(self) -> float | None:
        busy1, own1, w1 = self._snap()
        busy0, own0, w0 = self.start
        if busy0 is None or busy1 is None or w1 - w0 < self.min_wall:
            return None
        ncpu = os.cpu_count() or 1
        return min(1.0, max(0.0, ((busy1 - busy0) - (own1 - own0)) / ((w1 - w0) * ncpu)))


def wait_for_quiet(max_wait_s: float, threshold: float = 0.10) -> float | None:
    """Block (up to max_wait_s) until other processes use < threshold of the machine over 2 s."""
    t0 = time.perf_counter()
    while True:
        meter = CpuMeter()
        time.sleep(2.0)
        share = meter.others_share()
        if share is None or share < threshold or time.perf_counter() - t0 > max_wait_s:
            return share
        print(f"  machine busy (other processes use {share:.0%}); waiting for a quiet moment ...", file=sys.stderr,
              flush=True)


def serve_timed_calls(fn, reply) -> None:
    """A benchmark worker's loop: one timed call of `fn` per "go" line on stdin, answered
    with reply(seconds, fn's result, the share of the machine other processes used during
    the call, seen from this process; None for calls under 0.2 s)."""
    for line in sys.stdin:
        if line.strip() != "go":
            break
        meter = CpuMeter(min_wall=0.2)
        t0 = time.perf_counter()
        result = fn()
        reply(time.perf_counter() - t0, result, meter.others_share())


def drive_round_robin(procs: dict, rounds: int, log=None) -> tuple[dict, dict, list]:
    """The parent's side of serve_timed_calls for workers that answer one JSON line
    {"seconds", "tokens", "others"} per "go": `rounds` rounds over every worker, the order
    rotating each round; then the workers are told to stop. Returns (times per key, tokens
    per key (the last call's), the others' shares seen). `log(r, times, tokens)` after each round."""
    import json

    keys = list(procs)
    times = {k: [] for k in keys}
    tokens, others = {}, []
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:
            procs[k].stdin.write("go\n")
            procs[k].stdin.flush()
            res = json.loads(procs[k].stdout.readline())
            times[k].append(res["seconds"])
            tokens[k] = res["tokens"]
            if res["others"] is not None:
                others.append(res["others"])
        if log:
            log(r, times, tokens)
    for p in procs.values():
        p.stdin.close()
        p.wait()
    return times, tokens, others
