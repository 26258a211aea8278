"""The Open Bandit Dataset's layout (``obd``): a campaign's log and its ``item_context.csv``.

The log (``all.csv``; a campaign's folder holds ``CAMPAIGN.csv``: ``all``, ``men``, ``women``) holds one row per
impression: an unnamed index column, ``timestamp`` (ISO-8601), ``item_id``, ``position`` (from 1), ``click`` (0/1),
``propensity_score`` (the logging policy's probability of showing that item at that position),
``user_feature_0 ..`` (categorical, hashed in the published data) and ``user-item_affinity_0 ..`` (the user's past
clicks of each item). ``item_context.csv`` holds an unnamed index column, ``item_id`` and ``item_feature_0 ..``.

The dataset has no user ids. A user here is a **segment**: the rows that share every ``user_feature_*`` value
(``|``-joined into the user's label). A slate is then a segment's rows at one timestamp. Positions and
propensities are checked (an integer >= 1, a number in (0, 1]); positions are kept (``Logs.position``, from 0:
``validate-ab`` sizes its slates by them), propensities and the affinity columns, which only restate earlier
clicks, are not. Item features that are numbers in every row stay numbers; any
other ``item_feature_*`` column becomes one 0/1 column per value (named ``column=value``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from metarec.calibration.logs.columns import (
    integer_id_column,
    number_column,
    present_column,
    require_columns,
    show_value,
)
from metarec.calibration.logs.readers import read_delimited, require_pandas
from metarec.calibration.logs.schema import Events, ItemTable, make_events, make_item_table

LOG_FILE, ITEM_FILE = "all.csv", "item_context.csv"
USER_PREFIX, ITEM_PREFIX = "user_feature_", "item_feature_"
_SEGMENT = "\0segment"  # the column of user labels added to the parsed table; no file column can be named so


def read_obd(path: Path, items: Path | None) -> tuple[Events, ItemTable | None]:
    log = path
    if path.is_dir():  # a campaign's folder: all/all.csv, men/men.csv, women/women.csv
        names = list(dict.fromkeys([f"{path.name}.csv", LOG_FILE]))
        found = [path / name for name in names if (path / name).is_file()]
        if not found:
            wanted = " or ".join(names)
            raise ValueError(f"{path}: expected a directory holding {wanted} (a campaign's log); none there")
        log = found[0]
    if log.suffix.lower() != ".csv":
        raise ValueError(f"{log}: expected the .csv file of the Open Bandit Dataset's layout, got {log.suffix!r}")
    table = read_delimited(log, dtype=str)  # hashed features stay text; numbers are parsed column by column
    require_columns(table, ("timestamp", "item_id", "position", "click"))
    features = [name for name in table.frame.columns if name.startswith(USER_PREFIX)]
    if not features:
        raise ValueError(
            f"{log}: no {USER_PREFIX}* column; expected at least one (the dataset has no user ids: a user is the "
            "rows that share every user feature)"
        )
    segments = present_column(table, features[0], "a user feature").astype(str)
    for name in features[1:]:
        segments = segments + "|" + present_column(table, name, "a user feature").astype(str)
    position = integer_id_column(table, "position")
    if (position < 1).any():
        row = int((position < 1).argmax())
        raise table.error("position", row, "an integer >= 1 (the first position is 1)", show_value(position[row]))
    if "propensity_score" in table.frame.columns:
        propensity = number_column(table, "propensity_score", "a probability in (0, 1]")
        bad = ~((propensity > 0) & (propensity <= 1))
        if bad.any():
            row = int(bad.argmax())
            raise table.error("propensity_score", row, "a probability in (0, 1]", show_value(propensity[row]))
    frame = table.frame.copy()
    frame[_SEGMENT] = segments.to_numpy(dtype=object)
    events = make_events(dataclasses.replace(table, frame=frame), _SEGMENT, "item_id", "timestamp", None, "click",
                         integer_ids=False)  # fmt: skip
    events = dataclasses.replace(events, item=integer_id_column(table, "item_id"), position=position - 1)
    item_file = items if items is not None else (log.parent / ITEM_FILE if (log.parent / ITEM_FILE).is_file() else None)
    return events, None if item_file is None else read_item_context(item_file)


def read_item_context(path: Path) -> ItemTable:
    """``item_context.csv``: numeric ``item_feature_*`` columns as they are, the others one-hot."""
    table = read_delimited(path, dtype=str)
    require_columns(table, ("item_id",))
    ids = integer_id_column(table, "item_id")
    columns: list[np.ndarray] = []
    names: list[str] = []
    for name in (c for c in table.frame.columns if c.startswith(ITEM_PREFIX)):
        values = present_column(table, name, "a value (a number or a category)")
        numbers = require_pandas().to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)
        if np.isfinite(numbers).all():
            columns.append(numbers[:, None])
            names.append(name)
            continue
        categories = sorted(values.astype(str).unique())
        columns.append((values.astype(str).to_numpy()[:, None] == np.array(categories)[None, :]).astype(np.float64))
        names.extend(f"{name}={category}" for category in categories)
    features = np.concatenate(columns, axis=1).astype(np.float32) if columns else np.zeros((len(ids), 0), np.float32)
    return make_item_table(table, "item_id", ids, features, None, tuple(names))
