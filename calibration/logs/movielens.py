"""The MovieLens formats: 100K (``u.data``, ``u.item``, ``u.genre``), 1M (``ratings.dat``, ``movies.dat``) and
latest (``ratings.csv``, ``movies.csv``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metarec.calibration.logs.columns import binary_column, integer_id_column, require_columns, text_column
from metarec.calibration.logs.readers import Table, read_delimited
from metarec.calibration.logs.schema import Events, ItemTable, make_events, make_item_table


def _locate(path: Path, name: str) -> Path:
    if path.is_dir():
        if not (path / name).is_file():
            raise ValueError(f"{path}: expected a directory holding {name}, found no {name} in it")
        return path / name
    return path


def _beside(log: Path, items: Path | None, name: str) -> Path | None:
    default = log.parent / name
    return items if items is not None else (default if default.is_file() else None)


def _genres(table: Table, column: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """One-hot genres from '|'-separated names, columns in alphabetical order."""
    dummies = table.frame[column].fillna("").astype(str).str.get_dummies(sep="|")
    dummies = dummies.drop(columns=["(no genres listed)"], errors="ignore")
    return dummies.to_numpy(np.float32), tuple(str(name) for name in dummies.columns)


def read_movielens_100k(path: Path, items: Path | None) -> tuple[Events, ItemTable | None]:
    ratings = _locate(path, "u.data")
    names = ["user", "item", "rating", "timestamp"]
    table = read_delimited(ratings, sep="\t", names=names, quoted=False, encoding="latin-1")
    events = make_events(table, "user", "item", "timestamp", "rating", None, integer_ids=True)
    item_file = _beside(ratings, items, "u.item")
    if item_file is None:
        return events, None
    flags = [f"genre_{k}" for k in range(19)]
    columns = ["item", "title", "release_date", "video_release_date", "imdb_url", *flags]
    movies = read_delimited(item_file, sep="|", names=columns, quoted=False, encoding="latin-1", dtype=str)
    features = np.stack([binary_column(movies, flag) for flag in flags], axis=1)
    genre_names = _u_genre(item_file.parent / "u.genre") or tuple(flags)
    return events, make_item_table(
        movies, "item", integer_id_column(movies, "item"), features, text_column(movies, "title"), genre_names
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


def read_movielens_1m(path: Path, items: Path | None) -> tuple[Events, ItemTable | None]:
    ratings = _locate(path, "ratings.dat")
    names = ["UserID", "MovieID", "Rating", "Timestamp"]
    table = read_delimited(ratings, sep="::", names=names, quoted=False, encoding="latin-1")
    events = make_events(table, "UserID", "MovieID", "Timestamp", "Rating", None, integer_ids=True)
    item_file = _beside(ratings, items, "movies.dat")
    if item_file is None:
        return events, None
    movies = read_delimited(
        item_file, sep="::", names=["MovieID", "Title", "Genres"], quoted=False, encoding="latin-1", dtype=str
    )
    features, genre_names = _genres(movies, "Genres")
    ids = integer_id_column(movies, "MovieID")
    return events, make_item_table(movies, "MovieID", ids, features, text_column(movies, "Title"), genre_names)


def read_movielens_latest(path: Path, items: Path | None) -> tuple[Events, ItemTable | None]:
    ratings = _locate(path, "ratings.csv")
    table = read_delimited(ratings)
    require_columns(table, ("userId", "movieId", "rating", "timestamp"))
    events = make_events(table, "userId", "movieId", "timestamp", "rating", None, integer_ids=True)
    item_file = _beside(ratings, items, "movies.csv")
    if item_file is None:
        return events, None
    movies = read_delimited(item_file, dtype=str)
    require_columns(movies, ("movieId", "title", "genres"))
    features, genre_names = _genres(movies, "genres")
    ids = integer_id_column(movies, "movieId")
    return events, make_item_table(movies, "movieId", ids, features, text_column(movies, "title"), genre_names)
