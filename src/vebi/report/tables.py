"""CSV tables as people read them: human headers, 3 significant digits, intervals, the best value marked.

Generic over any CSV the evaluation writes: a column ``X`` (or ``X_mean``) with columns ``X_low`` and
``X_high`` becomes one column "X [low, high]"; one with ``X_std`` becomes "X ± std". The best value per
column is marked only where a column's direction is known from its name (``HIGHER`` / ``LOWER``
keywords) and the table has one row per method (within each group of its text columns).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Cell", "Table", "format_table", "header", "significant"]

DIGITS = 3
WORDS = {"iou": "IoU", "mca": "mCA", "auc": "AUC", "ci": "CI", "std": "std", "id": "ID"}
HIGHER = ("iou", "pointing", "mass", "insertion")  # larger is better (localisation / faithfulness scores)
LOWER = ("deletion",)  # smaller is better


@dataclass(frozen=True)
class Cell:
    text: str
    value: float | None = None  # what the column sorts by; None for text
    best: bool = False


@dataclass(frozen=True)
class Table:
    title: str
    caption: str
    columns: tuple[str, ...]  # human headers
    rows: tuple[tuple[Cell, ...], ...]
    source: Path
    truncated: int = 0  # rows left out
    keys: tuple[str, ...] = ()  # the CSV column each shown column comes from


def significant(value: float, digits: int = DIGITS) -> str:
    """``value`` to ``digits`` significant digits, in plain notation between 1e-4 and 1e7."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    text = f"{value:.{digits}g}"
    if "e" in text and 1e-4 <= abs(value) < 1e7:
        text = f"{value:.{max(digits - 1 - math.floor(math.log10(abs(value))), 0)}f}"
    return text


def header(key: str) -> str:
    """``random_class_accuracy`` -> "Random class accuracy", ``iou_mean_wrong`` -> "IoU mean wrong"."""
    words = [WORDS.get(w.lower(), w) for w in key.replace("-", "_").split("_") if w]
    if not words:
        return key
    first = words[0]
    return " ".join([first[:1].upper() + first[1:] if first not in WORDS.values() else first, *words[1:]])


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _cell(text: str) -> Cell:
    value = _number(text)
    if value is None:
        return Cell(text)
    plain = "." not in text and "e" not in text.lower()  # integers (counts, indices) stay as written
    return Cell(text if plain else significant(value), value)


def _direction(key: str) -> int:
    """+1 when larger is better, -1 when smaller is, 0 when the name does not say."""
    lower = key.lower()
    if any(w in lower for w in LOWER):
        return -1
    return 1 if any(w in lower for w in HIGHER) and "threshold" not in lower else 0


def _layout(keys: Sequence[str]) -> list[tuple[str, int, int | None, int | None, str]]:
    """Shown columns: (header, value column, low or std column, high column, kind "ci"/"std"/"")."""
    index = {k: i for i, k in enumerate(keys)}
    used: set[int] = set()
    out = []
    for i, key in enumerate(keys):
        if i in used:
            continue
        base = key.removesuffix("_mean") if key != "mean" else ""
        prefix = f"{base}_" if base else ""
        low, high, std = index.get(f"{prefix}low"), index.get(f"{prefix}high"), index.get(f"{prefix}std")
        if low is not None and high is not None and key != f"{prefix}low":
            used |= {low, high}
            out.append((f"{header(base or 'mean')} [95 % CI]", i, low, high, "ci"))
        elif std is not None and key != f"{prefix}std":
            used.add(std)
            out.append((f"{header(base or 'mean')} \u00b1 std", i, std, None, "std"))
        else:
            out.append((header(key), i, None, None, ""))
    return out


def format_table(title: str, caption: str, source: Path, keys: Sequence[str], rows: Sequence[Sequence[str]],
                 max_rows: int) -> Table:
    """The CSV ``keys`` + ``rows`` formatted for the page (first ``max_rows`` rows)."""
    layout = _layout(keys)
    shown = rows[:max_rows]
    body: list[list[Cell]] = []
    for row in shown:
        cells = []
        for _, i, a, b, kind in layout:
            cell = _cell(row[i] if i < len(row) else "")
            extra = [row[j] if j is not None and j < len(row) else "" for j in (a, b)]
            if kind == "ci" and cell.value is not None and all(_number(x) is not None for x in extra):
                cell = Cell(f"{cell.text} [{significant(float(extra[0]))}, {significant(float(extra[1]))}]",
                            cell.value)
            elif kind == "std" and cell.value is not None and _number(extra[0]) is not None:
                cell = Cell(f"{cell.text} \u00b1 {significant(float(extra[0]))}", cell.value)
            cells.append(cell)
        body.append(cells)
    _mark_best(body, [keys[i] for _, i, *_ in layout])
    return Table(title, caption, tuple(h for h, *_ in layout), tuple(tuple(r) for r in body), source,
                 max(0, len(rows) - max_rows), tuple(keys[i] for _, i, *_ in layout))


def _mark_best(body: list[list[Cell]], keys: Sequence[str]) -> None:
    """Mark the best value of each column with a known direction, among the rows of one group.

    Only for tables keyed by a "method" column whose other text columns (e.g. the image subset) form
    the groups, and only when every method appears once per group (not for per-threshold curves).
    """
    if "method" not in keys or not body:
        return
    m = keys.index("method")
    text_columns = [k for k in range(len(keys)) if k != m and all(r[k].value is None for r in body)]
    groups: dict[tuple[str, ...], list[int]] = {}
    for n, row in enumerate(body):
        groups.setdefault(tuple(row[k].text for k in text_columns), []).append(n)
    for members in groups.values():
        if len({body[n][m].text for n in members}) != len(members) or len(members) < 2:
            continue
        for k, key in enumerate(keys):
            sign = _direction(key)
            values = [(body[n][k].value, n) for n in members if body[n][k].value is not None]
            if not sign or len(values) < 2:
                continue
            best = max(sign * v for v, _ in values)
            for v, n in values:
                if sign * v == best:
                    body[n][k] = Cell(body[n][k].text, body[n][k].value, True)
