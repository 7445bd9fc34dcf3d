"""Resident memory of a process tree, sampled from /proc while a load runs."""

import threading
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
SAMPLE_SECONDS = 0.05


@dataclass(frozen=True)
class MemorySample:
    """One look at a process tree, in kB."""

    processes: int
    rss_kb: int
    pss_kb: int
    largest_hwm_kb: int


def tree_pids(root: int) -> list[int]:
    """The root and all its descendants, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            parent = _parent(entry)
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, ()))
    return found


def _parent(entry: Path) -> int | None:
    try:
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def _status_kb(pid: int, *keys: str) -> dict[str, int]:
    """Fields of /proc/PID/status (or smaps_rollup) in kB; missing ones are 0."""
    found = dict.fromkeys(keys, 0)
    for name in ("status", "smaps_rollup"):
        try:
            text = (PROC / str(pid) / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in found and value.strip().endswith("kB"):
                found[key] = int(value.split()[0])
    return found


def sample_tree(root: int) -> MemorySample:
    """Sum VmRSS and Pss over the tree; also the largest VmHWM of one process."""
    figures = [_status_kb(pid, "VmRSS", "Pss", "VmHWM") for pid in tree_pids(root)]
    return MemorySample(
        processes=len(figures),
        rss_kb=sum(figure["VmRSS"] for figure in figures),
        pss_kb=sum(figure["Pss"] for figure in figures),
        largest_hwm_kb=max((figure["VmHWM"] for figure in figures), default=0),
    )


class PeakSampler:
    """A thread that samples a process tree until stopped and keeps the peaks."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.idle = sample_tree(root)
        self.peak = self.idle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._take()

    def _take(self) -> None:
        now = sample_tree(self.root)
        self.peak = MemorySample(
            processes=max(self.peak.processes, now.processes),
            rss_kb=max(self.peak.rss_kb, now.rss_kb),
            pss_kb=max(self.peak.pss_kb, now.pss_kb),
            largest_hwm_kb=max(self.peak.largest_hwm_kb, now.largest_hwm_kb),
        )
