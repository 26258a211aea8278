"""Interaction logs to calibrate simulated users against: MovieLens files and a generic CSV/Parquet schema.

``load_logs(path, format)`` reads one of ``FORMATS`` into ``Logs``: one row per event with users and items
coded densely, plus an optional item table (numeric features and text). Every problem with a file is a
``ValueError`` that starts with the file's path and names the column and line (or row, for Parquet) and
what was expected.

Formats:
    movielens-100k: ``u.data`` (tab-separated ``user item rating timestamp``) or its directory; ``u.item``
        beside it gives titles and 19 genre flags (named from ``u.genre`` when present).
    movielens-1m: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) or its directory; ``movies.dat``
        beside it gives titles and genres.
    movielens-latest: ``ratings.csv`` (``userId,movieId,rating,timestamp``) or its directory; ``movies.csv``
        beside it gives titles and genres.
    csv: a ``.csv`` or ``.parquet`` file with columns ``user``, ``item``, ``timestamp`` (seconds since the
        epoch or ISO-8601, UTC when no offset is given) and ``rating`` and/or ``click`` (0/1). Its item file
        (``items=``) has a column ``item``, an optional ``text`` and numeric feature columns.

Parsing uses pandas, imported only when a file is read (``pip install "metarec[calibrate]"``).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import numbers
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("movielens-100k", "movielens-1m", "movielens-latest", "csv")

_INSTALL = 'pip install "metarec[calibrate]"'
_TIME = "seconds since the epoch (>= 0) or an ISO-8601 date"
# Labels that read back as int64: no sign but '-', no leading zeros, at most 18 digits.
_INTEGER = r"-?(?:0|[1-9][0-9]{0,17})"


@dataclass(frozen=True, eq=False)
class Logs:
    """Logged events, one row each, with users and items coded ``0..num_users-1`` and ``0..num_items-1``.

    Rows keep the order of the file. Codes follow first appearance in time (ties in file order), so the
    same file always gives the same codes.
    """

    user: np.ndarray  # int64 [E]
    item: np.ndarray  # int64 [E]
    timestamp: np.ndarray  # float64 [E], seconds since the epoch
    rating: np.ndarray  # float32 [E]; NaN where the event has no rating
    click: np.ndarray  # float32 [E]; 0/1, all 1 in a rating log
    user_ids: np.ndarray  # [num_users] original labels by code
    item_ids: np.ndarray  # [num_items] original labels by code
    item_features: np.ndarray | None  # float32 [num_items, F]; zeros for items the item file lacks
    item_text: list[str] | None  # [num_items]; "" for items the item file lacks
    feature_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("item", "timestamp", "rating", "click"):
            if len(getattr(self, name)) != len(self.user):
                raise ValueError(
                    f"Logs.{name}: expected {len(self.user)} entries (one per event), got {len(getattr(self, name))}"
                )
        width = 0 if self.item_features is None else self.item_features.shape[1]
        if self.item_features is not None and self.item_features.shape[0] != self.num_items:
            raise ValueError(f"Logs.item_features: expected {self.num_items} rows, got {self.item_features.shape[0]}")
        if self.item_text is not None and len(self.item_text) != self.num_items:
            raise ValueError(f"Logs.item_text: expected {self.num_items} entries, got {len(self.item_text)}")
        if len(self.feature_names) != width:
            raise ValueError(
                f"Logs.feature_names: expected {width} names (one per feature), got {len(self.feature_names)}"
            )

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_events(self) -> int:
        return len(self.user)

    def __len__(self) -> int:
        return self.num_events

    @property
    def has_ratings(self) -> bool:
        return bool(np.isfinite(self.rating).any())

    def sorted_by_time(self) -> Logs:
        """The events in order of (timestamp, user code), ties kept in their current order."""
        return self._take(np.lexsort((self.user, self.timestamp)))

    def subset(self, mask: np.ndarray) -> Logs:
        """The events where ``mask`` (bool [E]) is true; codes and the id and item tables stay as they are."""
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (self.num_events,):
            raise ValueError(
                f"mask: expected a boolean array of shape ({self.num_events},), got {mask.dtype} {mask.shape}"
            )
        return self._take(mask)

    def _take(self, rows: np.ndarray) -> Logs:
        return dataclasses.replace(
            self,
            user=self.user[rows],
            item=self.item[rows],
            timestamp=self.timestamp[rows],
            rating=self.rating[rows],
            click=self.click[rows],
        )


def load_logs(path: str | Path, format: str, items: str | Path | None = None) -> Logs:
    """Reads an interaction log.

    Args:
        path: The log file, or for the MovieLens formats the directory holding it.
        format: One of ``FORMATS``.
        items: An item file that replaces the one found beside the log, in the format's own layout
            (``u.item``, ``movies.dat``, ``movies.csv``, or the generic item schema for ``csv``).

    Returns:
        The events in file order, coded by first appearance in time.
    """
    path = Path(path)
    if format not in FORMATS:
        raise ValueError(f"{path}: unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if items is not None and not Path(items).is_file():
        raise ValueError(f"{items}: no such file (the item file)")
    _pandas()
    events, item_table = _READERS[format](path, None if items is None else Path(items))
    return _assemble(events, item_table)


def time_split(logs: Logs, holdout_frac: float) -> tuple[Logs, Logs]:
    """Splits the events at one instant: the past trains, the future is held out.

    The split time is the ``1 - holdout_frac`` quantile of all timestamps; events at or before it go to the
    first part. Both parts keep the full code and item tables.

    Args:
        logs: The events.
        holdout_frac: Share of events to hold out, in (0, 1).

    Returns:
        (past, future).
    """
    if isinstance(holdout_frac, bool) or not isinstance(holdout_frac, numbers.Real) or not 0 < holdout_frac < 1:
        raise ValueError(f"holdout_frac: expected a number in (0, 1), got {holdout_frac!r}")
    if logs.num_events == 0:
        raise ValueError("logs: expected at least one event to split, got none")
    split_time = float(np.quantile(logs.timestamp, 1.0 - holdout_frac))
    past = logs.timestamp <= split_time
    if past.all():
        raise ValueError(
            f"holdout_frac: {holdout_frac} holds out no events: the split time {split_time:g} is the latest "
            f"timestamp ({int((logs.timestamp == split_time).sum())} of {logs.num_events} events share it); "
            "expected a larger holdout_frac or logs spanning more time"
        )
    return logs.subset(past), logs.subset(~past)


def check_holdout_users(train: Logs, test: Logs) -> np.ndarray:
    """Which held-out events have a user with at least one training event.

    Returns:
        bool [len(test)].
    """
    if train.num_users != test.num_users or not np.array_equal(train.user_ids, test.user_ids):
        raise ValueError("test: expected the same user table as train (both parts of one time_split)")
    seen = np.zeros(train.num_users, dtype=bool)
    seen[train.user] = True
    return seen[test.user]


def write_logs_csv(logs: Logs, path: str | Path, items: str | Path | None = None) -> None:
    """Writes the events in the generic ``csv`` schema, which ``load_logs(path, "csv", items)`` reads back.

    Args:
        logs: The events.
        path: The CSV file to write: ``user,item,timestamp[,rating],click``.
        items: Where to write the item table (``item[,text],features...``), if anywhere.
    """
    pd = _pandas()
    timestamp = logs.timestamp
    if np.array_equal(timestamp, np.round(timestamp)):
        timestamp = timestamp.astype(np.int64)
    columns: dict[str, Any] = {
        "user": logs.user_ids[logs.user],
        "item": logs.item_ids[logs.item],
        "timestamp": timestamp,
    }
    if logs.has_ratings:
        columns["rating"] = logs.rating
    columns["click"] = logs.click.astype(np.int8)
    pd.DataFrame(columns).to_csv(path, index=False)
    if items is not None:
        table: dict[str, Any] = {"item": logs.item_ids}
        if logs.item_text is not None:
            table["text"] = logs.item_text
        for k, name in enumerate(logs.feature_names):
            table[name] = logs.item_features[:, k]  # type: ignore[index]
        pd.DataFrame(table).to_csv(items, index=False)


# ---------------------------------------------------------------------------------------------------------------------
# Files as tables, with the line of every row for error messages


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as err:
        raise ImportError(f"reading interaction logs needs pandas: {_INSTALL}") from err
    return pandas


@dataclass(frozen=True)
class _Table:
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


def _read_delimited(
    path: Path,
    *,
    sep: str = ",",
    names: list[str] | None = None,
    quoted: bool = True,
    encoding: str = "utf-8",
    dtype: Any = None,
) -> _Table:
    """Reads a text table; with ``names`` it has no header line. Blank lines are skipped."""
    pd = _pandas()
    source: Any = path
    if len(sep) > 1:  # MovieLens' '::'; pandas' fast parser takes one character
        source = io.BytesIO(path.read_bytes().replace(sep.encode(), b"\t"))
    table = _Table(path, None, None, sep, quoted, encoding)
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
        raise _field_count_error(table, bad[0], bad[1], names) from None
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
        count = _field_count(table, _line_text(table, line))
        if count < frame.shape[1]:
            raise _field_count_error(table, line, count, list(frame.columns))
    return table


def _read_parquet(path: Path) -> _Table:
    if importlib.util.find_spec("pyarrow") is None:
        raise ImportError(f"reading Parquet needs pyarrow: {_INSTALL}")
    import pyarrow

    try:
        frame = _pandas().read_parquet(path)
    except (pyarrow.ArrowException, OSError) as err:
        raise ValueError(f"{path}: cannot read the file as Parquet: {err}") from None
    return _Table(path, frame.reset_index(drop=True), None)


def _read_csv_or_parquet(path: Path, dtype: dict[str, Any]) -> _Table:
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path)
    if path.suffix.lower() == ".csv":
        return _read_delimited(path, dtype=dtype)
    raise ValueError(f"{path}: expected a .csv or .parquet file, got suffix {path.suffix!r}")


def _field_count(table: _Table, text: str) -> int:
    if table.quoted:
        return len(next(csv.reader([text], delimiter=table.sep)))
    return len(text.split(table.sep))


def _line_text(table: _Table, line: int) -> str:
    with open(table.path, encoding=table.encoding, errors="replace", newline="") as file:
        for number, text in enumerate(file, 1):
            if number == line:
                return text.rstrip("\r\n")
    return ""


def _first_bad_line(table: _Table, expected: int | None) -> tuple[int, int] | None:
    """The first (line, field count) whose count differs from ``expected`` (None: from the header)."""
    with open(table.path, encoding=table.encoding, errors="replace", newline="") as file:
        for number, text in enumerate(file, 1):
            text = text.rstrip("\r\n")
            if expected is None:
                expected = _field_count(table, text)
            elif text.strip() and _field_count(table, text) != expected:
                return number, _field_count(table, text)
    return None


def _field_count_error(table: _Table, line: int, count: int, names: list[str] | None) -> ValueError:
    shown = "tab" if table.sep == "\t" else repr(table.sep)
    if names is None:
        expected = "as many fields as the header"
    else:
        expected = f"{len(names)} fields separated by {shown} ({', '.join(names)})"
    return ValueError(f"{table.path}: line {line}: expected {expected}, got {count}")


# ---------------------------------------------------------------------------------------------------------------------
# Columns


def _floats(values: Any) -> np.ndarray:
    """float64 [R]; NaN where a cell is empty or not a number."""
    return _pandas().to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)


def _show(value: Any) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def _require_columns(table: _Table, required: tuple[str, ...], one_of: tuple[str, ...] = ()) -> None:
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


def _present(table: _Table, column: str, expected: str) -> Any:
    """The column, or an error at its first empty cell (a short row says so)."""
    values = table.frame[column]
    empty = values.isna().to_numpy()
    if empty.any():
        row = int(empty.argmax())
        if table.lines is not None:
            count = _field_count(table, _line_text(table, int(table.lines[row])))
            if count < table.frame.shape[1]:
                raise _field_count_error(table, int(table.lines[row]), count, list(table.frame.columns))
        raise table.error(column, row, expected, "an empty value")
    return values


def _integer_ids(table: _Table, column: str) -> np.ndarray:
    values = _present(table, column, "an integer id")
    if values.dtype.kind in "iu":
        return values.to_numpy(np.int64)
    numbers = _floats(values)
    bad = ~(np.isfinite(numbers) & (numbers == np.round(numbers)))
    if bad.any():
        row = int(bad.argmax())
        raise table.error(column, row, "an integer id", _show(values.iloc[row]))
    return numbers.astype(np.int64)


def _labels(values: Any) -> np.ndarray:
    """Labels as int64 when they all read as integers, else as strings (object)."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        return values.astype(np.int64) if np.array_equal(values, np.round(values)) else values
    text = _pandas().Series(values, dtype=object).astype(str)
    if len(text) and text.str.fullmatch(_INTEGER).all():
        return text.astype(np.int64).to_numpy()
    return text.to_numpy(dtype=object)


def _numbers(table: _Table, column: str, expected: str, allow_empty: bool = False) -> np.ndarray:
    """Finite numbers; NaN for empty cells where ``allow_empty``."""
    values = table.frame[column] if allow_empty else _present(table, column, expected)
    numbers = _floats(values)
    bad = ~np.isfinite(numbers) & values.notna().to_numpy()
    if bad.any():
        row = int(bad.argmax())
        raise table.error(column, row, expected, _show(values.iloc[row]))
    return numbers


def _binary(table: _Table, column: str) -> np.ndarray:
    values = _present(table, column, "0 or 1")
    numbers = _floats(values)
    bad = ~np.isin(numbers, (0.0, 1.0))
    if bad.any():
        row = int(bad.argmax())
        raise table.error(column, row, "0 or 1", _show(values.iloc[row]))
    return numbers.astype(np.float32)


def _seconds(table: _Table, column: str) -> np.ndarray:
    """Seconds since the epoch from numbers, datetimes or ISO-8601 strings (naive ones read as UTC)."""
    pd = _pandas()
    values = _present(table, column, _TIME)
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
        raise table.error(column, row, _TIME, _show(values.iloc[row]))
    return seconds


# ---------------------------------------------------------------------------------------------------------------------
# Events and items, whatever the format


@dataclass(frozen=True)
class _Events:
    table: _Table
    user: np.ndarray  # [E] labels
    item: np.ndarray  # [E] labels
    timestamp: np.ndarray  # float64 [E]
    rating: np.ndarray  # float32 [E]
    click: np.ndarray  # float32 [E]


@dataclass(frozen=True)
class _ItemTable:
    ids: np.ndarray  # [R] labels
    features: np.ndarray | None  # float32 [R, F]
    text: list[str] | None  # [R]
    feature_names: tuple[str, ...]


def _events(
    table: _Table, user: str, item: str, timestamp: str, rating: str | None, click: str | None, integer_ids: bool
) -> _Events:
    def ids(column: str) -> np.ndarray:
        return _integer_ids(table, column) if integer_ids else _present(table, column, "an id").to_numpy()

    size = len(table.frame)
    if size == 0:
        raise ValueError(f"{table.path}: the log holds no events; expected at least one row")
    return _Events(
        table,
        ids(user),
        ids(item),
        _seconds(table, timestamp),
        # Where a log has clicks too, an event may come without a rating.
        np.full(size, np.nan, np.float32)
        if rating is None
        else _numbers(table, rating, "a finite number", allow_empty=click is not None).astype(np.float32),
        np.ones(size, np.float32) if click is None else _binary(table, click),
    )


def _item_table(
    table: _Table,
    column: str,
    ids: np.ndarray,
    features: np.ndarray | None,
    text: list[str] | None,
    names: tuple[str, ...],
) -> _ItemTable:
    repeated = _pandas().Index(ids).duplicated()
    if repeated.any():
        second = int(repeated.argmax())
        first = int(np.flatnonzero(ids == ids[second])[0])
        raise ValueError(
            f"{table.path}: column {column!r}: item {_show(ids[second])} appears twice, on {table.where(first)} "
            f"and {table.where(second)}; expected one row per item"
        )
    if features is not None and features.shape[1] == 0:
        features, names = None, ()
    return _ItemTable(ids, features, text, names)


def _codes(labels: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes in order of first appearance along ``order``, and the labels by code."""
    in_order, uniques = _pandas().factorize(labels[order])
    codes = np.empty(len(labels), np.int64)
    codes[order] = in_order
    return codes, _labels(np.asarray(uniques, dtype=None if labels.dtype.kind in "iuf" else object))


def _check_duplicates(
    events: _Events, user: np.ndarray, item: np.ndarray, user_ids: np.ndarray, item_ids: np.ndarray
) -> None:
    frame = _pandas().DataFrame({"user": user, "item": item, "timestamp": events.timestamp})
    repeated = frame.duplicated().to_numpy()
    if repeated.any():
        second = int(repeated.argmax())
        same = (user == user[second]) & (item == item[second]) & (events.timestamp == events.timestamp[second])
        first = int(np.flatnonzero(same)[0])
        where = events.table.where
        user_id, item_id = _show(user_ids[user[second]]), _show(item_ids[item[second]])
        raise ValueError(
            f"{events.table.path}: {where(first)} and {where(second)} are the same event (user {user_id}, "
            f"item {item_id}, timestamp {events.timestamp[second]:g}); "
            "expected at most one row per user, item and timestamp"
        )


def _assemble(events: _Events, items: _ItemTable | None) -> Logs:
    order = np.argsort(events.timestamp, kind="stable")
    user, user_ids = _codes(events.user, order)
    item, item_ids = _codes(events.item, order)
    _check_duplicates(events, user, item, user_ids, item_ids)
    features, text, names = None, None, ()
    if items is not None:
        pd = _pandas()
        if item_ids.dtype.kind == items.ids.dtype.kind == "i":
            row = pd.Index(items.ids).get_indexer(item_ids)
        else:
            row = pd.Index(items.ids.astype(str)).get_indexer(item_ids.astype(str))
        known = row >= 0
        if items.features is not None:
            features = np.zeros((len(item_ids), items.features.shape[1]), np.float32)
            features[known] = items.features[row[known]]
            names = items.feature_names
        if items.text is not None:
            text = [items.text[r] if r >= 0 else "" for r in row]
    return Logs(user, item, events.timestamp, events.rating, events.click, user_ids, item_ids, features, text, names)


# ---------------------------------------------------------------------------------------------------------------------
# Formats


def _locate(path: Path, name: str) -> Path:
    if path.is_dir():
        if not (path / name).is_file():
            raise ValueError(f"{path}: expected a directory holding {name}, found no {name} in it")
        return path / name
    return path


def _beside(log: Path, items: Path | None, name: str) -> Path | None:
    default = log.parent / name
    return items if items is not None else (default if default.is_file() else None)


def _genres(table: _Table, column: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """One-hot genres from '|'-separated names, columns in alphabetical order."""
    dummies = table.frame[column].fillna("").astype(str).str.get_dummies(sep="|")
    dummies = dummies.drop(columns=["(no genres listed)"], errors="ignore")
    return dummies.to_numpy(np.float32), tuple(str(name) for name in dummies.columns)


def _titles(table: _Table, column: str) -> list[str]:
    return table.frame[column].fillna("").astype(str).tolist()


def _movielens_100k(path: Path, items: Path | None) -> tuple[_Events, _ItemTable | None]:
    ratings = _locate(path, "u.data")
    names = ["user", "item", "rating", "timestamp"]
    table = _read_delimited(ratings, sep="\t", names=names, quoted=False, encoding="latin-1")
    events = _events(table, "user", "item", "timestamp", "rating", None, integer_ids=True)
    item_file = _beside(ratings, items, "u.item")
    if item_file is None:
        return events, None
    flags = [f"genre_{k}" for k in range(19)]
    columns = ["item", "title", "release_date", "video_release_date", "imdb_url", *flags]
    movies = _read_delimited(item_file, sep="|", names=columns, quoted=False, encoding="latin-1", dtype=str)
    features = np.stack([_binary(movies, flag) for flag in flags], axis=1)
    genre_names = _u_genre(item_file.parent / "u.genre") or tuple(flags)
    return events, _item_table(
        movies, "item", _integer_ids(movies, "item"), features, _titles(movies, "title"), genre_names
    )


def _u_genre(path: Path) -> tuple[str, ...] | None:
    """Genre names by flag position from ``u.genre`` (``name|index`` lines), or None without the file."""
    if not path.is_file():
        return None
    names: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), 1):
        name, bar, index = line.rpartition("|")
        if line.strip() and not (bar and index.strip().isdigit()):
            raise ValueError(f"{path}: line {number}: expected 'genre name|index', got {line!r}")
        if line.strip():
            names[int(index)] = name
    if sorted(names) != list(range(19)):
        raise ValueError(f"{path}: expected genres numbered 0 to 18, got {sorted(names)}")
    return tuple(names[k] for k in range(19))


def _movielens_1m(path: Path, items: Path | None) -> tuple[_Events, _ItemTable | None]:
    ratings = _locate(path, "ratings.dat")
    names = ["UserID", "MovieID", "Rating", "Timestamp"]
    table = _read_delimited(ratings, sep="::", names=names, quoted=False, encoding="latin-1")
    events = _events(table, "UserID", "MovieID", "Timestamp", "Rating", None, integer_ids=True)
    item_file = _beside(ratings, items, "movies.dat")
    if item_file is None:
        return events, None
    movies = _read_delimited(
        item_file, sep="::", names=["MovieID", "Title", "Genres"], quoted=False, encoding="latin-1", dtype=str
    )
    features, genre_names = _genres(movies, "Genres")
    ids = _integer_ids(movies, "MovieID")
    return events, _item_table(movies, "MovieID", ids, features, _titles(movies, "Title"), genre_names)


def _movielens_latest(path: Path, items: Path | None) -> tuple[_Events, _ItemTable | None]:
    ratings = _locate(path, "ratings.csv")
    table = _read_delimited(ratings)
    _require_columns(table, ("userId", "movieId", "rating", "timestamp"))
    events = _events(table, "userId", "movieId", "timestamp", "rating", None, integer_ids=True)
    item_file = _beside(ratings, items, "movies.csv")
    if item_file is None:
        return events, None
    movies = _read_delimited(item_file, dtype=str)
    _require_columns(movies, ("movieId", "title", "genres"))
    features, genre_names = _genres(movies, "genres")
    ids = _integer_ids(movies, "movieId")
    return events, _item_table(movies, "movieId", ids, features, _titles(movies, "title"), genre_names)


def _generic(path: Path, items: Path | None) -> tuple[_Events, _ItemTable | None]:
    if path.is_dir():
        raise ValueError(f"{path}: expected a .csv or .parquet file, got a directory")
    # Labels stay text, so '007' keeps its zeros; all-integer labels become int64 in _labels.
    table = _read_csv_or_parquet(path, dtype={"user": str, "item": str})
    _require_columns(table, ("user", "item", "timestamp"), one_of=("rating", "click"))
    columns = table.frame.columns
    rating = "rating" if "rating" in columns else None
    click = "click" if "click" in columns else None
    events = _events(table, "user", "item", "timestamp", rating, click, integer_ids=False)
    if items is None:
        return events, None
    item_table = _read_csv_or_parquet(items, dtype={"item": str, "text": str})
    _require_columns(item_table, ("item",))
    ids = _labels(_present(item_table, "item", "an item id").to_numpy())
    text = _titles(item_table, "text") if "text" in item_table.frame.columns else None
    names = tuple(name for name in item_table.frame.columns if name not in ("item", "text"))
    expected = "a number (item features are numeric)"
    features = np.zeros((len(ids), len(names)), np.float32)
    for k, name in enumerate(names):
        features[:, k] = _numbers(item_table, name, expected)
    return events, _item_table(item_table, "item", ids, features, text, names)


_READERS: dict[str, Callable[[Path, Path | None], tuple[_Events, _ItemTable | None]]] = {
    "movielens-100k": _movielens_100k,
    "movielens-1m": _movielens_1m,
    "movielens-latest": _movielens_latest,
    "csv": _generic,
}
