"""The LMTP benchmark's figures: runs, medians, ratios, and the Markdown table."""

import statistics
from dataclasses import dataclass, field
from typing import Any

from lmtp_load import KB, Cell
from proc_memory import MemorySample

OURS = "ours"
DOVECOT = "dovecot"
TITLES = {OURS: "ours", DOVECOT: "Dovecot"}


@dataclass(frozen=True)
class RunFigure:
    """One repetition of one cell: messages per second for each server."""

    repetition: int
    cell: Cell
    rates: dict[str, float | None]
    # CPU milliseconds each server's process tree spent per message in the run.
    cpu_ms: dict[str, float | None] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """Ours over Dovecot in this run, when both runs succeeded."""
        ours, dovecot = self.rates.get(OURS), self.rates.get(DOVECOT)
        return ours / dovecot if ours and dovecot else None

    def line(self) -> str:
        """A progress line."""
        rates = " ".join(
            f"{name} {_rate(rate)} msg/s{_cpu_note(self.cpu_ms.get(name))}"
            for name, rate in self.rates.items()
        )
        ratio = f" ratio {self.ratio:.2f}" if self.ratio else ""
        return f"{self.cell.label}: {rates}{ratio}"


@dataclass(frozen=True)
class RssFigure:
    """Memory of one server's process tree before and during the large-message run."""

    name: str
    cell: Cell
    idle: MemorySample
    peak: MemorySample
    seconds: float
    ok: bool

    def line(self) -> str:
        """A progress line."""
        return (
            f"memory {self.name}: idle {_mb(self.idle.rss_kb)}, "
            f"peak {_mb(self.peak.rss_kb)} RSS in {self.peak.processes} processes"
            f"{'' if self.ok else ' (run FAILED)'}"
        )


def _rate(rate: float | None) -> str:
    return "failed" if rate is None else f"{rate:,.1f}"


def _cpu_note(cpu_ms: float | None) -> str:
    return "" if cpu_ms is None else f" ({cpu_ms:.2f} ms CPU)"


def _mb(kb: int) -> str:
    return f"{kb / KB:,.0f} MB"


def _median(values: list[float | None]) -> float | None:
    good = [value for value in values if value is not None]
    return statistics.median(good) if good else None


@dataclass
class Report:
    """Everything measured so far, in the order it was measured."""

    names: list[str]
    cells: list[Cell]
    runs: list[RunFigure] = field(default_factory=list)
    rss: list[RssFigure] = field(default_factory=list)
    failures: int = 0
    stopped_by: str = ""

    def _runs_of(self, cell: Cell) -> list[RunFigure]:
        return [run for run in self.runs if run.cell == cell]

    def _rates(self, cell: Cell, name: str) -> list[float | None]:
        return [run.rates.get(name) for run in self._runs_of(cell)]

    def _cpu(self, cell: Cell, name: str) -> list[float | None]:
        return [run.cpu_ms.get(name) for run in self._runs_of(cell)]

    def _has_cpu(self) -> bool:
        return any(run.cpu_ms for run in self.runs)

    def _ratios(self, cell: Cell) -> list[float | None]:
        return [run.ratio for run in self._runs_of(cell)]

    def markdown(self) -> list[str]:
        """The throughput table, then the memory table."""
        lines = self._throughput_table()
        if self.stopped_by:
            lines += ["", f"Stopped early: {self.stopped_by}"]
        if self.rss:
            lines += ["", *self._memory_table()]
        return lines

    def _both(self) -> bool:
        return OURS in self.names and DOVECOT in self.names

    def _throughput_table(self) -> list[str]:
        if not self.runs:
            return ["No run was completed."]
        titles = [f"{TITLES[name]} msg/s" for name in self.names]
        if self._both():
            titles += ["ours/Dovecot (median)", "ratio range"]
        if self._has_cpu():
            titles.append(
                "CPU ms/msg (" + ", ".join(TITLES[n] for n in self.names) + ")"
            )
        lines = [
            "| cell | messages a run | " + " | ".join(titles) + " |",
            "|---|---:|" + "---:|" * len(titles),
        ]
        for cell in self.cells:
            if self._runs_of(cell):
                lines.append(self._cell_row(cell))
        return lines

    def _cell_row(self, cell: Cell) -> str:
        values = [_rate(_median(self._rates(cell, name))) for name in self.names]
        if self._both():
            ratios = [ratio for ratio in self._ratios(cell) if ratio is not None]
            median = _median(list(ratios))
            values.append("failed" if median is None else f"{median:.2f}")
            values.append(
                f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "failed"
            )
        if self._has_cpu():
            medians = [_median(self._cpu(cell, name)) for name in self.names]
            values.append(", ".join("-" if m is None else f"{m:.2f}" for m in medians))
        return f"| {cell.label} | {cell.messages:,} | " + " | ".join(values) + " |"

    def _memory_table(self) -> list[str]:
        cell = self.rss[0].cell
        lines = [
            f"Memory while {cell.sessions} sessions each deliver "
            f"{cell.per_session} message of {cell.size >> 20} MB to 1 recipient "
            "(sums over the server's process tree, sampled every 50 ms):",
            "",
            "| server | idle RSS | peak RSS | peak PSS | largest process (VmHWM) "
            "| processes | run time |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for figure in self.rss:
            lines.append(
                f"| {TITLES[figure.name]} | {_mb(figure.idle.rss_kb)} "
                f"| {_mb(figure.peak.rss_kb)} | {_mb(figure.peak.pss_kb)} "
                f"| {_mb(figure.peak.largest_hwm_kb)} | {figure.peak.processes} "
                f"| {figure.seconds:.1f} s{'' if figure.ok else ' (FAILED)'} |"
            )
        return lines

    def data(self, command: str) -> dict[str, Any]:
        """The figures as JSON-ready data."""
        return {
            "command": command,
            "servers": self.names,
            "failures": self.failures,
            "stopped_by": self.stopped_by or None,
            "cells": [self._cell_data(cell) for cell in self.cells],
            "memory": [_rss_data(figure) for figure in self.rss],
        }

    def _cell_data(self, cell: Cell) -> dict[str, Any]:
        return {
            "cell": cell.label,
            "size": cell.size,
            "recipients": cell.recipients,
            "sessions": cell.sessions,
            "messages": cell.messages,
            "rates": {name: self._rates(cell, name) for name in self.names},
            "median": {name: _median(self._rates(cell, name)) for name in self.names},
            "ratios": self._ratios(cell),
            "ratio_median": _median(self._ratios(cell)),
            "cpu_ms_per_message": {name: self._cpu(cell, name) for name in self.names},
        }


def _rss_data(figure: RssFigure) -> dict[str, Any]:
    return {
        "server": figure.name,
        "sessions": figure.cell.sessions,
        "message_bytes": figure.cell.size,
        "ok": figure.ok,
        "seconds": round(figure.seconds, 3),
        "idle_rss_kb": figure.idle.rss_kb,
        "peak_rss_kb": figure.peak.rss_kb,
        "peak_pss_kb": figure.peak.pss_kb,
        "largest_process_hwm_kb": figure.peak.largest_hwm_kb,
        "peak_processes": figure.peak.processes,
    }
