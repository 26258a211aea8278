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
    obd: the Open Bandit Dataset's ``all.csv`` (or its directory) and ``item_context.csv`` beside it; a user is
        a segment of rows sharing every ``user_feature_*`` value (see :mod:`metarec.calibration.logs.obd`).

Parsing uses pandas, imported only when a file is read (``pip install "metarec[calibrate]"``).
"""

from metarec.calibration.logs.generic import write_logs_csv
from metarec.calibration.logs.loader import FORMATS, load_logs
from metarec.calibration.logs.schema import (
    Logs,
    check_holdout_users,
    repeat_rate,
    split_at,
    time_split,
    users_repeat,
)

__all__ = [
    "FORMATS",
    "Logs",
    "check_holdout_users",
    "load_logs",
    "repeat_rate",
    "split_at",
    "time_split",
    "users_repeat",
    "write_logs_csv",
]
