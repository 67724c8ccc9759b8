"""Process accounting from /proc for the benchmarks: CPU time and peak RSS of a whole process tree.

CPU is `se.sum_exec_runtime` (first field of each thread's schedstat), so the kernel's softirq copy into a
socket or ring, which runs on the sender's CPU, is not charged to the tool (the method of the baselines)."""

from __future__ import annotations

import os
from pathlib import Path


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split():
                out.extend(tree(int(child)))
    except OSError:
        pass
    return out


def cpu_ns(pid: int) -> int:
    """CPU nanoseconds used so far by every thread of the tree rooted at `pid`."""
    total = 0
    for p in tree(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                total += int(Path(f"/proc/{p}/task/{tid}/schedstat").read_text().split()[0])
        except OSError:
            continue
    return total


def peak_rss_kib(pid: int) -> int:
    """Sum of VmHWM (peak resident memory) over the tree."""
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total
