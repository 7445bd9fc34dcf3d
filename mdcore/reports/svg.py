"""Small inline SVG charts drawn from numbers: stacked columns and horizontal bars.

Every text is escaped; the charts carry no script and no external reference, so a
report page stays self-contained and safe to open from a file.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

DELIVERED_COLOUR = "#2e7d32"
REFUSED_COLOUR = "#c62828"
BAR_COLOUR = "#1565c0"
TRACK_COLOUR = "#e0e0e0"

# Bars of horizontal charts: labels of up to 34 characters on their left, and
# room on their right for captions such as "12.4 KiB, no limit" (30 at most).
_BAR_X = 230
_BAR_LENGTH = 300


@dataclass(frozen=True)
class Column:
    """One column of a stacked chart: a label and its lower and upper values."""

    label: str
    lower: int
    upper: int


def stacked_columns(
    columns: Sequence[Column], title: str, width: int = 720, height: int = 220
) -> str:
    """Columns of two stacked values (delivered below, refused above) over time."""
    top = max((column.lower + column.upper for column in columns), default=0) or 1
    plot_height = height - 40
    slot = (width - 50) / max(len(columns), 1)
    parts = [_open(width, height, title), _axis(top, plot_height)]
    for index, column in enumerate(columns):
        x = 45 + index * slot
        lower = plot_height * column.lower / top
        upper = plot_height * column.upper / top
        tip = f"{column.label}: {column.lower} delivered, {column.upper} refused"
        parts.append(f"<g><title>{escape(tip)}</title>")
        parts.append(_rect(x, 10 + plot_height - lower, slot * 0.8, lower, "delivered"))
        parts.append(
            _rect(x, 10 + plot_height - lower - upper, slot * 0.8, upper, "refused")
        )
        parts.append("</g>")
    parts += _column_labels(columns, slot, plot_height)
    parts.append("</svg>")
    return "".join(parts)


def horizontal_bars(
    rows: Sequence[tuple[str, float, str]], title: str, maximum: float | None = None
) -> str:
    """One bar per (label, value, caption) row, scaled to `maximum` or the largest."""
    width, row_height = 720, 26
    height = row_height * max(len(rows), 1) + 10
    scale = maximum or max((value for _, value, _ in rows), default=0) or 1
    parts = [_open(width, height, title)]
    for index, (label, value, caption) in enumerate(rows):
        y = 5 + index * row_height
        length = _BAR_LENGTH * min(value, scale) / scale
        parts.append(
            f'<text x="0" y="{y + 16}" class="label">{escape(_short(label, 34))}</text>'
            f'<rect x="{_BAR_X}" y="{y + 4}" width="{_BAR_LENGTH}" height="16" '
            f'fill="{TRACK_COLOUR}"/>'
            f'<rect x="{_BAR_X}" y="{y + 4}" width="{length:.1f}" height="16" '
            f'fill="{BAR_COLOUR}"/>'
            f'<text x="{_BAR_X + _BAR_LENGTH + 6}" y="{y + 16}" class="label">'
            f"{escape(_short(caption, 30))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _open(width: int, height: int, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {width} {height}" width="100%" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
    )


def _axis(top: int, plot_height: int) -> str:
    return (
        f'<line x1="42" y1="10" x2="42" y2="{10 + plot_height}" stroke="#757575"/>'
        f'<text x="38" y="18" text-anchor="end" class="label">{top}</text>'
        f'<text x="38" y="{10 + plot_height}" text-anchor="end" class="label">0</text>'
    )


def _rect(x: float, y: float, width: float, height: float, kind: str) -> str:
    if height <= 0:
        return ""
    colour = DELIVERED_COLOUR if kind == "delivered" else REFUSED_COLOUR
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" '
        f'fill="{colour}"/>'
    )


def _column_labels(
    columns: Sequence[Column], slot: float, plot_height: int
) -> list[str]:
    # Label about eight columns, whatever their number, so the labels never overlap.
    every = max(1, len(columns) // 8)
    return [
        f'<text x="{45 + index * slot:.1f}" y="{plot_height + 28}" class="label">'
        f"{escape(column.label)}</text>"
        for index, column in enumerate(columns)
        if index % every == 0
    ]


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
