"""The generic ``csv`` format: a ``.csv`` or ``.parquet`` event file with columns ``user``, ``item``, ``timestamp``
and ``rating`` and/or ``click``, and its item file (``item``, an optional ``text`` and numeric features)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from metarec.calibration.logs.columns import as_labels, number_column, present_column, require_columns, text_column
from metarec.calibration.logs.readers import read_csv_or_parquet, require_pandas
from metarec.calibration.logs.schema import Events, ItemTable, Logs, make_events, make_item_table


def write_logs_csv(logs: Logs, path: str | Path, items: str | Path | None = None) -> None:
    """Writes the events in the generic ``csv`` schema, which ``load_logs(path, "csv", items)`` reads back.

    Args:
        logs: The events.
        path: The CSV file to write: ``user,item,timestamp[,rating],click``.
        items: Where to write the item table (``item[,text],features...``), if anywhere.
    """
    pd = require_pandas()
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


def read_generic(path: Path, items: Path | None) -> tuple[Events, ItemTable | None]:
    if path.is_dir():
        raise ValueError(f"{path}: expected a .csv or .parquet file, got a directory")
    # Labels stay text, so '007' keeps its zeros; all-integer labels become int64 in as_labels.
    table = read_csv_or_parquet(path, dtype={"user": str, "item": str})
    require_columns(table, ("user", "item", "timestamp"), one_of=("rating", "click"))
    columns = table.frame.columns
    rating = "rating" if "rating" in columns else None
    click = "click" if "click" in columns else None
    events = make_events(table, "user", "item", "timestamp", rating, click, integer_ids=False)
    if items is None:
        return events, None
    item_table = read_csv_or_parquet(items, dtype={"item": str, "text": str})
    require_columns(item_table, ("item",))
    ids = as_labels(present_column(item_table, "item", "an item id").to_numpy())
    text = text_column(item_table, "text") if "text" in item_table.frame.columns else None
    names = tuple(name for name in item_table.frame.columns if name not in ("item", "text"))
    expected = "a number (item features are numeric)"
    features = np.zeros((len(ids), len(names)), np.float32)
    for k, name in enumerate(names):
        features[:, k] = number_column(item_table, name, expected)
    return events, make_item_table(item_table, "item", ids, features, text, names)
