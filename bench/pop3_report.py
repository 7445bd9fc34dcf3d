"""The POP3 benchmark's figures: values per repetition, ratios, the Markdown table."""

import statistics
from dataclasses import dataclass, field
from typing import Any

OURS = "ours"
DOVECOT = "dovecot"


@dataclass(frozen=True)
class Item:
    """One measured quantity, its unit and which way is better."""

    name: str
    unit: str
    higher_is_better: bool

    @property
    def better(self) -> str:
        """How to read the ratio ours/Dovecot."""
        return "higher" if self.higher_is_better else "lower"


@dataclass
class Report:
    """Every value measured so far: item -> server -> one value per repetition."""

    items: list[Item]
    values: dict[tuple[str, str], dict[int, float | None]] = field(default_factory=dict)
    failures: int = 0
    stopped_by: str = ""

    def add(
        self, repetition: int, item: Item, server: str, value: float | None
    ) -> None:
        """Record one value (None for a failed run)."""
        self.values.setdefault((item.name, server), {})[repetition] = value

    def series(self, item: Item, server: str) -> list[float]:
        """The good values of one item on one server."""
        found = self.values.get((item.name, server), {})
        return [value for value in found.values() if value is not None]

    def ratios(self, item: Item) -> list[float]:
        """Ours over Dovecot, repetition by repetition, where both succeeded."""
        ours = self.values.get((item.name, OURS), {})
        dovecot = self.values.get((item.name, DOVECOT), {})
        pairs = [(ours[rep], dovecot.get(rep)) for rep in ours]
        return [mine / theirs for mine, theirs in pairs if mine and theirs]

    def markdown(self) -> list[str]:
        """The table: medians per server and the median ratio with its range."""
        lines = [
            "| item | unit | ours | Dovecot | ours/Dovecot (range) | better if |",
            "|---|---|---|---|---|---|",
        ]
        lines += [self._row(item) for item in self.items]
        if self.failures:
            lines += ["", f"{self.failures} run(s) failed and are left out."]
        if self.stopped_by:
            lines += ["", f"Stopped early: {self.stopped_by}."]
        return lines

    def _row(self, item: Item) -> str:
        ours = _median(self.series(item, OURS))
        dovecot = _median(self.series(item, DOVECOT))
        ratios = self.ratios(item)
        ratio = "n/a"
        if ratios:
            ratio = (
                f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            )
        return (
            f"| {item.name} | {item.unit} | {_number(ours)} | {_number(dovecot)} "
            f"| {ratio} | {item.better} |"
        )

    def data(self, command: str) -> dict[str, Any]:
        """Everything, for --json."""
        return {
            "command": command,
            "items": [
                {
                    "name": item.name,
                    "unit": item.unit,
                    "higher_is_better": item.higher_is_better,
                    OURS: self.values.get((item.name, OURS), {}),
                    DOVECOT: self.values.get((item.name, DOVECOT), {}),
                    "ratios": self.ratios(item),
                }
                for item in self.items
            ],
            "failures": self.failures,
            "stopped_by": self.stopped_by,
        }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _number(value: float | None) -> str:
    if value is None:
        return "failed"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}"
