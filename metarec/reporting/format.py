"""Numbers and names as report text: 4 significant digits, p-values, percentages, intervals, counts, file names.

Missing or NaN values print as :data:`MISSING` ("—") and infinities never crash formatting.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["MISSING", "fmt", "fmt_ci", "fmt_count", "fmt_p", "fmt_pct", "number", "p_phrase", "safe_name"]

MISSING = "—"


def number(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing, NaN or not a number."""
    if x is None:
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def fmt(x: Any) -> str:
    """A value with 4 significant digits; "—" when missing or NaN, "∞" / "-∞" when infinite."""
    value = number(x)
    if value is None:
        return MISSING
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.4g}"


def fmt_p(p: Any) -> str:
    """A p-value with 4 decimals (``0.0123``), ``<1e-4`` below 1e-4, "—" when missing."""
    value = number(p)
    if value is None:
        return MISSING
    return "<1e-4" if value < 1e-4 else f"{value:.4f}"


def fmt_pct(x: Any, signed: bool = True) -> str:
    """A fraction as a percentage with 2 decimals (0.015 -> ``+1.50%``), "—" when missing."""
    value = number(x)
    if value is None:
        return MISSING
    return f"{100 * value:+.2f}%" if signed else f"{100 * value:.2f}%"


def fmt_ci(ci: Any, formatter: Callable[[Any], str] = fmt) -> str:
    """An interval ``[low, high]`` with each end through ``formatter``; "—" when there is no interval."""
    if not isinstance(ci, Sequence) or isinstance(ci, str) or len(ci) != 2:
        return MISSING
    if number(ci[0]) is None and number(ci[1]) is None:
        return MISSING
    return f"[{formatter(ci[0])}, {formatter(ci[1])}]"


def fmt_count(n: Any) -> str:
    """A count with thousands separators (``100,000``), "—" when missing or not finite."""
    value = number(n)
    return f"{value:,.0f}" if value is not None and math.isfinite(value) else MISSING


def p_phrase(p: Any) -> str:
    """``p = 0.0123`` or ``p <1e-4`` for running text."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def safe_name(name: str) -> str:
    """``name`` usable as a file name: every character outside ``[A-Za-z0-9_.-]`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
