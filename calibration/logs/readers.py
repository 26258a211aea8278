"""Text and Parquet files as tables, with the line (or row) of every row for error messages."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_INSTALL = 'pip install "metarec[calibrate]"'


def require_pandas() -> Any:
    try:
        import pandas
    except ImportError as err:
        raise ImportError(f"reading interaction logs needs pandas: {_INSTALL}") from err
    return pandas


@dataclass(frozen=True)
class Table:
    """A parsed file and where each of its rows came from."""

    path: Path
    frame: Any  # pandas.DataFrame
    lines: np.ndarray | None  # [R] 1-based line in the file of each row; None for Parquet (rows are counted)
    sep: str = ","
    quoted: bool = True
    encoding: str = "utf-8"

    def where(self, row: int) -> str:
        return f"row {row + 1}" if self.lines is None else f"line {self.lines[row]}"

    def error(self, column: str, row: int, expected: str, got: str) -> ValueError:
        return ValueError(f"{self.path}: column {column!r}, {self.where(row)}: expected {expected}, got {got}")


def read_delimited(
    path: Path,
    *,
    sep: str = ",",
    names: list[str] | None = None,
    quoted: bool = True,
    encoding: str = "utf-8",
    dtype: Any = None,
) -> Table:
    """Reads a text table; with ``names`` it has no header line. Blank lines are skipped."""
    pd = require_pandas()
    source: Any = path
    if len(sep) > 1:  # MovieLens' '::'; pandas' fast parser takes one character
        source = io.BytesIO(path.read_bytes().replace(sep.encode(), b"\t"))
    table = Table(path, None, None, sep, quoted, encoding)
    try:
        with warnings.catch_warnings():
            # A first row longer than `names` is cut silently, with only this warning.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                source,
                sep="\t" if len(sep) > 1 else sep,
                header=None if names else 0,
                names=names,
                index_col=False,
                quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
                encoding=encoding,
                skip_blank_lines=False,
                keep_default_na=False,
                na_values=[""],
                dtype=dtype,
                low_memory=False,
            )
    except (pd.errors.ParserError, pd.errors.ParserWarning) as err:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        bad = (int(found[2]), int(found[3])) if found else _first_bad_line(table, len(names) if names else None)
        if bad is None:
            raise ValueError(f"{path}: cannot parse the file: {str(err).strip()}") from None
        raise field_count_error(table, bad[0], bad[1], names) from None
    except pd.errors.EmptyDataError:
        if names is None:
            raise ValueError(f"{path}: the file is empty; expected a header line naming the columns") from None
        frame = pd.DataFrame({name: [] for name in names})
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: byte {err.start} is not {encoding} text") from None
    frame.columns = [str(name).strip() for name in frame.columns]
    lines = np.arange(len(frame)) + (1 if names else 2)
    blank = frame.isna().all(axis=1).to_numpy()
    if blank.any():
        frame, lines = frame[~blank].reset_index(drop=True), lines[~blank]
    table = dataclasses.replace(table, frame=frame, lines=lines)
    # A short row leaves its last cells empty; the first one tells a wrong separator before any value does.
    ends_empty = frame.iloc[:, -1].isna().to_numpy() if frame.shape[1] else np.zeros(0, bool)
    if ends_empty.any():
        line = int(lines[ends_empty.argmax()])
        count = field_count(table, line_text(table, line))
        if count < frame.shape[1]:
            raise field_count_error(table, line, count, list(frame.columns))
    return table


def _read_parquet(path: Path) -> Table:
    if importlib.util.find_spec("pyarrow") is None:
        raise ImportError(f"reading Parquet needs pyarrow: {_INSTALL}")
    import pyarrow

    try:
        frame = require_pandas().read_parquet(path)
    except (pyarrow.ArrowException, OSError) as err:
        raise ValueError(f"{path}: cannot read the file as Parquet: {err}") from None
    return Table(path, frame.reset_index(drop=True), None)


def read_csv_or_parquet(path: Path, dtype: dict[str, Any]) -> Table:
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path)
    if path.suffix.lower() == ".csv":
        return read_delimited(path, dtype=dtype)
    raise ValueError(f"{path}: expected a .csv or .parquet file, got suffix {path.suffix!r}")


def field_count(table: Table, text: str) -> int:
    if table.quoted:
        return len(next(csv.reader([text], delimiter=table.sep)))
    return len(text.split(table.sep))


def line_text(table: Table, line: int) -> str:
    with open(table.path, encoding=table.encoding, errors="replace", newline="") as file:
        for number, text in enumerate(file, 1):
            if number == line:
                return text.rstrip("\r\n")
    return ""


def _first_bad_line(table: Table, expected: int | None) -> tuple[int, int] | None:
    """The first (line, field count) whose count differs from ``expected`` (None: from the header)."""
    with open(table.path, encoding=table.encoding, errors="replace", newline="") as file:
        for number, text in enumerate(file, 1):
            text = text.rstrip("\r\n")
            if expected is None:
                expected = field_count(table, text)
            elif text.strip() and field_count(table, text) != expected:
                return number, field_count(table, text)
    return None


def field_count_error(table: Table, line: int, count: int, names: list[str] | None) -> ValueError:
    shown = "tab" if table.sep == "\t" else repr(table.sep)
    if names is None:
        expected = "as many fields as the header"
    else:
        expected = f"{len(names)} fields separated by {shown} ({', '.join(names)})"
    return ValueError(f"{table.path}: line {line}: expected {expected}, got {count}")
