"""The event table every format reads into (:class:`Logs`), how parsed columns are checked and coded into it,
and the time split of a table into training and held-out events."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import numpy as np

from metarec.calibration.logs.columns import (
    as_labels,
    binary_column,
    integer_id_column,
    number_column,
    present_column,
    seconds_column,
    show_value,
)
from metarec.calibration.logs.readers import Table, require_pandas


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
    position: np.ndarray | None = None  # int64 [E], 0 first, where the format says where each row was shown

    def __post_init__(self) -> None:
        for name in ("item", "timestamp", "rating", "click", "position"):
            if getattr(self, name) is not None and len(getattr(self, name)) != len(self.user):
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
            position=None if self.position is None else self.position[rows],
        )


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
    split_time, past = split_at(logs, holdout_frac)
    if past.all():
        raise ValueError(
            f"holdout_frac: {holdout_frac} holds out no events: the split time {split_time:g} is the latest "
            f"timestamp ({int((logs.timestamp == split_time).sum())} of {logs.num_events} events share it); "
            "expected a larger holdout_frac or logs spanning more time"
        )
    return logs.subset(past), logs.subset(~past)


def split_at(logs: Logs, holdout_frac: float) -> tuple[float, np.ndarray]:
    """The split time of :func:`time_split` (the ``1 - holdout_frac`` quantile of the timestamps) and which events
    are at or before it, without its checks."""
    split_time = float(np.quantile(logs.timestamp, 1.0 - holdout_frac))
    return split_time, logs.timestamp <= split_time


def repeat_rate(logs: Logs) -> float:
    """Share of events whose user had already chosen the same item."""
    pairs = logs.user.astype(np.int64) * logs.num_items + logs.item
    return 1.0 - len(np.unique(pairs)) / max(len(pairs), 1)


def users_repeat(logs: Logs) -> bool:
    """Whether users come back to items: more than 1% of the events repeat their user's earlier choice. Where
    they do not, an item a user chose is no alternative for them again."""
    return repeat_rate(logs) > 0.01


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


# ---------------------------------------------------------------------------------------------------------------------
# Events and items, whatever the format


@dataclass(frozen=True)
class Events:
    table: Table
    user: np.ndarray  # [E] labels
    item: np.ndarray  # [E] labels
    timestamp: np.ndarray  # float64 [E]
    rating: np.ndarray  # float32 [E]
    click: np.ndarray  # float32 [E]
    position: np.ndarray | None = None  # int64 [E], 0 first


@dataclass(frozen=True)
class ItemTable:
    ids: np.ndarray  # [R] labels
    features: np.ndarray | None  # float32 [R, F]
    text: list[str] | None  # [R]
    feature_names: tuple[str, ...]


def make_events(
    table: Table, user: str, item: str, timestamp: str, rating: str | None, click: str | None, integer_ids: bool
) -> Events:
    def ids(column: str) -> np.ndarray:
        return integer_id_column(table, column) if integer_ids else present_column(table, column, "an id").to_numpy()

    size = len(table.frame)
    if size == 0:
        raise ValueError(f"{table.path}: the log holds no events; expected at least one row")
    return Events(
        table,
        ids(user),
        ids(item),
        seconds_column(table, timestamp),
        # Where a log has clicks too, an event may come without a rating.
        np.full(size, np.nan, np.float32)
        if rating is None
        else number_column(table, rating, "a finite number", allow_empty=click is not None).astype(np.float32),
        np.ones(size, np.float32) if click is None else binary_column(table, click),
    )


def make_item_table(
    table: Table,
    column: str,
    ids: np.ndarray,
    features: np.ndarray | None,
    text: list[str] | None,
    names: tuple[str, ...],
) -> ItemTable:
    repeated = require_pandas().Index(ids).duplicated()
    if repeated.any():
        second = int(repeated.argmax())
        first = int(np.flatnonzero(ids == ids[second])[0])
        raise ValueError(
            f"{table.path}: column {column!r}: item {show_value(ids[second])} appears twice, "
            f"on {table.where(first)} and {table.where(second)}; expected one row per item"
        )
    if features is not None and features.shape[1] == 0:
        features, names = None, ()
    return ItemTable(ids, features, text, names)


def _codes(labels: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes in order of first appearance along ``order``, and the labels by code."""
    in_order, uniques = require_pandas().factorize(labels[order])
    codes = np.empty(len(labels), np.int64)
    codes[order] = in_order
    return codes, as_labels(np.asarray(uniques, dtype=None if labels.dtype.kind in "iuf" else object))


def _check_duplicates(
    events: Events, user: np.ndarray, item: np.ndarray, user_ids: np.ndarray, item_ids: np.ndarray
) -> None:
    frame = require_pandas().DataFrame({"user": user, "item": item, "timestamp": events.timestamp})
    repeated = frame.duplicated().to_numpy()
    if repeated.any():
        second = int(repeated.argmax())
        same = (user == user[second]) & (item == item[second]) & (events.timestamp == events.timestamp[second])
        first = int(np.flatnonzero(same)[0])
        where = events.table.where
        user_id, item_id = show_value(user_ids[user[second]]), show_value(item_ids[item[second]])
        raise ValueError(
            f"{events.table.path}: {where(first)} and {where(second)} are the same event (user {user_id}, "
            f"item {item_id}, timestamp {events.timestamp[second]:g}); "
            "expected at most one row per user, item and timestamp"
        )


def assemble(events: Events, items: ItemTable | None) -> Logs:
    order = np.argsort(events.timestamp, kind="stable")
    user, user_ids = _codes(events.user, order)
    item, item_ids = _codes(events.item, order)
    _check_duplicates(events, user, item, user_ids, item_ids)
    features, text, names = None, None, ()
    if items is not None:
        pd = require_pandas()
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
    return Logs(user, item, events.timestamp, events.rating, events.click, user_ids, item_ids, features, text, names,
                events.position)  # fmt: skip
