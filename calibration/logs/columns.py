"""Columns of a parsed table: ids, numbers, 0/1 flags, timestamps and text, each checked cell by cell."""

from __future__ import annotations

from typing import Any

import numpy as np

from metarec.calibration.logs.readers import Table, field_count, field_count_error, line_text, require_pandas

_TIME = "seconds since the epoch (>= 0) or an ISO-8601 date"
# Labels that read back as int64: no sign but '-', no leading zeros, at most 18 digits.
_INTEGER = r"-?(?:0|[1-9][0-9]{0,17})"


def _floats(values: Any) -> np.ndarray:
    """float64 [R]; NaN where a cell is empty or not a number."""
    return require_pandas().to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)


def show_value(value: Any) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def require_columns(table: Table, required: tuple[str, ...], one_of: tuple[str, ...] = ()) -> None:
    found = list(table.frame.columns)
    missing = [repr(name) for name in required if name not in found]
    if one_of and not any(name in found for name in one_of):
        missing.append(" or ".join(repr(name) for name in one_of))
    if missing:
        expected = ", ".join(required) + (f" and at least one of {', '.join(one_of)}" if one_of else "")
        raise ValueError(
            f"{table.path}: missing column {', '.join(missing)}; expected columns {expected}; "
            f"found {', '.join(found) or 'no columns'}"
        )


def present_column(table: Table, column: str, expected: str) -> Any:
    """The column, or an error at its first empty cell (a short row says so)."""
    values = table.frame[column]
    empty = values.isna().to_numpy()
    if empty.any():
        row = int(empty.argmax())
        if table.lines is not None:
            count = field_count(table, line_text(table, int(table.lines[row])))
            if count < table.frame.shape[1]:
                raise field_count_error(table, int(table.lines[row]), count, list(table.frame.columns))
        raise table.error(column, row, expected, "an empty value")
    return values


def integer_id_column(table: Table, column: str) -> np.ndarray:
    values = present_column(table, column, "an integer id")
    if values.dtype.kind in "iu":
        return values.to_numpy(np.int64)
    numbers = _floats(values)
    bad = ~(np.isfinite(numbers) & (numbers == np.round(numbers)))
    if bad.any():
        row = int(bad.argmax())
        raise table.error(column, row, "an integer id", show_value(values.iloc[row]))
    return numbers.astype(np.int64)


def as_labels(values: Any) -> np.ndarray:
    """Labels as int64 when they all read as integers, else as strings (object)."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        return values.astype(np.int64) if np.array_equal(values, np.round(values)) else values
    text = require_pandas().Series(values, dtype=object).astype(str)
    if len(text) and text.str.fullmatch(_INTEGER).all():
        return text.astype(np.int64).to_numpy()
    return text.to_numpy(dtype=object)


def number_column(table: Table, column: str, expected: str, allow_empty: bool = False) -> np.ndarray:
    """Finite numbers; NaN for empty cells where ``allow_empty``."""
    values = table.frame[column] if allow_empty else present_column(table, column, expected)
    numbers = _floats(values)
    bad = ~np.isfinite(numbers) & values.notna().to_numpy()
    if bad.any():
        row = int(bad.argmax())
        raise table.error(column, row, expected, show_value(values.iloc[row]))
    return numbers


def binary_column(table: Table, column: str) -> np.ndarray:
    values = present_column(table, column, "0 or 1")
    numbers = _floats(values)
    bad = ~np.isin(numbers, (0.0, 1.0))
    if bad.any():
        row = int(bad.argmax())
        raise table.error(column, row, "0 or 1", show_value(values.iloc[row]))
    return numbers.astype(np.float32)


def seconds_column(table: Table, column: str) -> np.ndarray:
    """Seconds since the epoch from numbers, datetimes or ISO-8601 strings (naive ones read as UTC)."""
    pd = require_pandas()
    values = present_column(table, column, _TIME)
    if pd.api.types.is_datetime64_any_dtype(values):
        dates = values.dt.tz_localize("UTC") if values.dt.tz is None else values
    elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        dates = None
        seconds = values.to_numpy(np.float64)
    else:
        seconds = _floats(values)
        # The first cell decides between numbers and dates, so the error points at the odd one out.
        dates = None if np.isfinite(seconds[0]) else pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
    if dates is not None:
        seconds = ((dates - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(np.float64)
    bad = ~np.isfinite(seconds) | (seconds < 0)
    if bad.any():
        row = int(bad.argmax())
        raise table.error(column, row, _TIME, show_value(values.iloc[row]))
    return seconds


def text_column(table: Table, column: str) -> list[str]:
    return table.frame[column].fillna("").astype(str).tolist()
