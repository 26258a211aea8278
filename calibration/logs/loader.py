"""``load_logs``: reads a log in one of ``FORMATS`` into :class:`Logs`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from metarec.calibration.logs.generic import read_generic
from metarec.calibration.logs.movielens import read_movielens_1m, read_movielens_100k, read_movielens_latest
from metarec.calibration.logs.obd import read_obd
from metarec.calibration.logs.readers import require_pandas
from metarec.calibration.logs.schema import Events, ItemTable, Logs, assemble

FORMATS = ("movielens-100k", "movielens-1m", "movielens-latest", "csv", "obd")


def load_logs(path: str | Path, format: str, items: str | Path | None = None) -> Logs:
    """Reads an interaction log.

    Args:
        path: The log file, or for the MovieLens formats the directory holding it.
        format: One of ``FORMATS``.
        items: An item file that replaces the one found beside the log, in the format's own layout
            (``u.item``, ``movies.dat``, ``movies.csv``, the generic item schema for ``csv``, ``item_context.csv``
            for ``obd``).

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
    require_pandas()
    events, item_table = _READERS[format](path, None if items is None else Path(items))
    return assemble(events, item_table)


_READERS: dict[str, Callable[[Path, Path | None], tuple[Events, ItemTable | None]]] = {
    "movielens-100k": read_movielens_100k,
    "movielens-1m": read_movielens_1m,
    "movielens-latest": read_movielens_latest,
    "csv": read_generic,
    "obd": read_obd,
}
