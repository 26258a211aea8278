"""Loaders of interaction logs: each format read back from small synthetic files (ids, ratings, timestamps,
genres and titles), the generic schema written and read back unchanged, the time split, and a named error
for each kind of bad file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from metarec.calibration.logs import FORMATS, Logs, check_holdout_users, load_logs, time_split, write_logs_csv

pytest.importorskip("pandas")

GENRES_100K = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def u_item_line(item: int, title: str, genres: list[int]) -> str:
    flags = ["1" if k in genres else "0" for k in range(19)]
    return "|".join([str(item), title, "01-Jan-1995", "", "http://imdb/x", *flags]) + "\n"


def ml100k(folder: Path, genre_file: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    # users 196 and 22, items 242, 377 and 51; item 51 is missing from u.item, item 999 only in it
    write(
        folder / "u.data",
        "196\t242\t3\t881250949\n22\t377\t1\t878887116\n196\t51\t2\t881250950\n22\t242\t5\t878887110\n",
    )
    write(
        folder / "u.item",
        u_item_line(242, "Kolya (1996)", [5])
        + u_item_line(377, "Heavyweights (1994)", [4, 5])
        + u_item_line(999, "Nobody", [1]),
        encoding="latin-1",
    )
    if genre_file:
        write(folder / "u.genre", "".join(f"{name}|{k}\n" for k, name in enumerate(GENRES_100K)) + "\n")
    return folder


def ml1m(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978300000\n")
    write(
        folder / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "3::Amélie (2001)::Comedy|Romance\n",
        encoding="latin-1",
    )
    return folder


def ml_latest(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write(
        folder / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,3.5,964981247\n2,193609,0.5,1537109082\n",
    )
    write(
        folder / "movies.csv",
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '3,"Grumpier Old Men, The (1995)",Comedy|Romance\n'
        "193609,Andrew Dice Clay: Dice Rules (1991),(no genres listed)\n",
    )
    return folder


def assert_same_logs(a: Logs, b: Logs) -> None:
    for name in ("user", "item", "timestamp", "rating", "click", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.feature_names == b.feature_names
    assert a.item_text == b.item_text
    if a.item_features is None:
        assert b.item_features is None
    else:
        np.testing.assert_array_equal(a.item_features, b.item_features)


# ---------------------------------------------------------------------------------------------------------------------
# Formats


def test_movielens_100k_directory_and_file(tmp_path: Path) -> None:
    logs = load_logs(ml100k(tmp_path / "ml-100k"), "movielens-100k")
    # coded by first appearance in time: user 22 rated first (878887110), item 242 first
    assert logs.user_ids.tolist() == [22, 196] and logs.item_ids.tolist() == [242, 377, 51]
    assert logs.user_ids.dtype == np.int64 and logs.user.dtype == np.int64 and logs.item.dtype == np.int64
    np.testing.assert_array_equal(logs.user_ids[logs.user], [196, 22, 196, 22])  # rows stay in file order
    np.testing.assert_array_equal(logs.item_ids[logs.item], [242, 377, 51, 242])
    np.testing.assert_array_equal(logs.rating, np.array([3, 1, 2, 5], np.float32))
    np.testing.assert_array_equal(logs.timestamp, [881250949, 878887116, 881250950, 878887110])
    assert logs.timestamp.dtype == np.float64 and logs.rating.dtype == np.float32 and logs.click.dtype == np.float32
    np.testing.assert_array_equal(logs.click, 1.0)
    assert (logs.num_users, logs.num_items, logs.num_events, len(logs), logs.has_ratings) == (2, 3, 4, 4, True)
    assert logs.feature_names == tuple(GENRES_100K)
    assert logs.item_text == ["Kolya (1996)", "Heavyweights (1994)", ""]
    assert logs.item_features is not None and logs.item_features.dtype == np.float32
    assert logs.item_features.shape == (3, 19)
    assert np.flatnonzero(logs.item_features[0]).tolist() == [5]
    assert np.flatnonzero(logs.item_features[1]).tolist() == [4, 5]
    assert not logs.item_features[2].any()  # missing from u.item: zeros
    assert_same_logs(logs, load_logs(tmp_path / "ml-100k" / "u.data", "movielens-100k"))


def test_movielens_100k_without_item_or_genre_file(tmp_path: Path) -> None:
    folder = ml100k(tmp_path, genre_file=False)
    assert load_logs(folder, "movielens-100k").feature_names == tuple(f"genre_{k}" for k in range(19))
    (folder / "u.item").unlink()
    logs = load_logs(folder, "movielens-100k")
    assert logs.item_features is None and logs.item_text is None and logs.feature_names == ()


def test_movielens_1m(tmp_path: Path) -> None:
    logs = load_logs(ml1m(tmp_path), "movielens-1m")
    assert logs.user_ids.tolist() == [2, 1] and logs.item_ids.tolist() == [1193, 661]
    np.testing.assert_array_equal(logs.rating, [5, 3, 4])
    np.testing.assert_array_equal(logs.timestamp, [978300760, 978302109, 978300000])
    # genres alphabetical over the item file, one-hot
    assert logs.feature_names == ("Animation", "Children's", "Comedy", "Drama", "Musical", "Romance")
    np.testing.assert_array_equal(logs.item_features, [[0, 0, 0, 1, 0, 0], [1, 1, 0, 0, 1, 0]])
    assert logs.item_text == ["One Flew Over the Cuckoo's Nest (1975)", "James and the Giant Peach (1996)"]
    assert (
        load_logs(tmp_path / "ratings.dat", "movielens-1m", items=tmp_path / "movies.dat").item_text == logs.item_text
    )


def test_movielens_latest(tmp_path: Path) -> None:
    logs = load_logs(ml_latest(tmp_path), "movielens-latest")
    assert logs.user_ids.tolist() == [1, 2] and logs.item_ids.tolist() == [3, 1, 193609]
    np.testing.assert_array_equal(logs.rating, [4.0, 3.5, 0.5])
    assert logs.item_text == ["Grumpier Old Men, The (1995)", "Toy Story (1995)", "Andrew Dice Clay: Dice Rules (1991)"]
    assert "(no genres listed)" not in logs.feature_names
    assert logs.feature_names == ("Adventure", "Animation", "Children", "Comedy", "Fantasy", "Romance")
    np.testing.assert_array_equal(logs.item_features, [[0, 0, 0, 1, 0, 1], [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]])


def test_items_argument_replaces_the_item_file(tmp_path: Path) -> None:
    folder = ml100k(tmp_path / "data")
    other = write(tmp_path / "other.item", u_item_line(51, "Legends of the Fall (1994)", [8]), encoding="latin-1")
    logs = load_logs(folder, "movielens-100k", items=other)
    assert logs.item_text == ["", "", "Legends of the Fall (1994)"]
    assert logs.feature_names == tuple(f"genre_{k}" for k in range(19))  # no u.genre beside other.item


def test_generic_csv_with_iso_timestamps_string_labels_and_items(tmp_path: Path) -> None:
    log = write(
        tmp_path / "log.csv",
        "user,item,timestamp,rating\n"
        "alice,007,2024-01-01T00:00:10Z,4\n"
        "bob,x1,2024-01-01 02:00:00+02:00,2.5\n"  # 00:00:00 UTC: the first event
        '"carol, jr",007,2024-01-02,1\n',
    )
    items = write(tmp_path / "items.csv", "item,text,length,popular\nx1,First,1.5,1\n007,Bond,2,0\nunused,U,0,0\n")
    logs = load_logs(log, "csv", items=items)
    assert logs.user_ids.tolist() == ["bob", "alice", "carol, jr"] and logs.user_ids.dtype == object
    assert logs.item_ids.tolist() == ["x1", "007"]  # leading zeros kept: labels are text
    start = 1704067200.0  # 2024-01-01T00:00:00Z
    np.testing.assert_array_equal(logs.timestamp, [start + 10, start, start + 86400])
    np.testing.assert_array_equal(logs.rating, [4, 2.5, 1])
    assert logs.feature_names == ("length", "popular") and logs.item_text == ["First", "Bond"]
    np.testing.assert_array_equal(logs.item_features, [[1.5, 1], [2, 0]])


def test_generic_csv_click_log_with_numeric_timestamps(tmp_path: Path) -> None:
    log = write(tmp_path / "clicks.csv", "user,item,timestamp,click\n3,10,100.5,1\n1,10,100,0\n3,11,101,0\n")
    logs = load_logs(log, "csv")
    assert logs.user_ids.tolist() == [1, 3] and logs.user_ids.dtype == np.int64  # integer labels become int64
    np.testing.assert_array_equal(logs.timestamp, [100.5, 100, 101])
    np.testing.assert_array_equal(logs.click, [1, 0, 0])
    assert np.isnan(logs.rating).all() and not logs.has_ratings
    assert logs.item_features is None and logs.item_text is None


def test_generic_csv_with_clicks_may_leave_ratings_empty(tmp_path: Path) -> None:
    log = write(tmp_path / "log.csv", "user,item,timestamp,rating,click\n1,1,1,,1\n1,2,2,5,1\n1,3,3,,0\n")
    logs = load_logs(log, "csv")
    np.testing.assert_array_equal(logs.rating, [np.nan, 5, np.nan])
    assert logs.has_ratings


def test_codes_follow_time_then_file_order(tmp_path: Path) -> None:
    log = write(tmp_path / "log.csv", "user,item,timestamp,click\nb,i,5,1\nc,j,5,1\na,k,9,1\nd,k,1,1\n")
    logs = load_logs(log, "csv")
    assert logs.user_ids.tolist() == ["d", "b", "c", "a"] and logs.item_ids.tolist() == ["k", "i", "j"]
    again = load_logs(log, "csv")
    np.testing.assert_array_equal(logs.user, again.user)


def test_parquet_log_and_items(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import pandas as pd

    frame = pd.DataFrame(
        {
            "user": [7, 7, 8],
            "item": ["a", "b", "a"],
            "timestamp": pd.to_datetime(["2024-01-01 00:00:01", "2024-01-01 00:00:00", "2024-01-01 00:00:02"]),
            "rating": [1.0, 2.0, 3.0],
        }
    )
    frame.to_parquet(tmp_path / "log.parquet")
    pd.DataFrame({"item": ["b", "a"], "score": [0.5, 0.25]}).to_parquet(tmp_path / "items.parquet")
    logs = load_logs(tmp_path / "log.parquet", "csv", items=tmp_path / "items.parquet")
    assert logs.user_ids.tolist() == [7, 8] and logs.item_ids.tolist() == ["b", "a"]
    np.testing.assert_array_equal(logs.timestamp, [1704067201, 1704067200, 1704067202])
    np.testing.assert_array_equal(logs.item_features, [[0.5], [0.25]])
    assert logs.item_text is None and logs.feature_names == ("score",)

    frame.assign(rating=[1.0, np.inf, 3.0]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: column 'rating', row 2: expected a finite number, got inf"):
        load_logs(tmp_path / "bad.parquet", "csv")


@pytest.mark.parametrize("fmt", ["movielens-100k", "movielens-latest"])
def test_write_logs_csv_round_trips(tmp_path: Path, fmt: str) -> None:
    logs = load_logs(ml100k(tmp_path) if fmt == "movielens-100k" else ml_latest(tmp_path), fmt)
    write_logs_csv(logs, tmp_path / "out.csv", items=tmp_path / "out_items.csv")
    assert_same_logs(logs, load_logs(tmp_path / "out.csv", "csv", items=tmp_path / "out_items.csv"))


def test_write_logs_csv_round_trips_text_labels_clicks_and_fractional_times(tmp_path: Path) -> None:
    log = write(
        tmp_path / "log.csv",
        'user,item,timestamp,rating,click\n007,a,0.1,,1\n\'x\',"b,c",1234567890.123456,0.3,0\n007,"b,c",2e9,,1\n',
    )
    logs = load_logs(log, "csv")
    write_logs_csv(logs, tmp_path / "out.csv")
    assert_same_logs(logs, load_logs(tmp_path / "out.csv", "csv"))
    clicks = load_logs(write(tmp_path / "clicks.csv", "user,item,timestamp,click\n1,2,3,1\n"), "csv")
    write_logs_csv(clicks, tmp_path / "clicks_out.csv")
    assert (tmp_path / "clicks_out.csv").read_text().splitlines()[0] == "user,item,timestamp,click"
    assert_same_logs(clicks, load_logs(tmp_path / "clicks_out.csv", "csv"))


# ---------------------------------------------------------------------------------------------------------------------
# Logs, time_split, check_holdout_users


def ramp(num_events: int, num_users: int = 5) -> Logs:
    """Events at times 0..E-1 in reverse file order, users round robin."""
    user = np.arange(num_events)[::-1] % num_users
    return Logs(
        user=user.astype(np.int64),
        item=np.zeros(num_events, np.int64),
        timestamp=np.arange(num_events, dtype=np.float64)[::-1].copy(),
        rating=np.ones(num_events, np.float32),
        click=np.ones(num_events, np.float32),
        user_ids=np.arange(num_users),
        item_ids=np.array(["only"], dtype=object),
        item_features=None,
        item_text=None,
    )


def test_sorted_by_time_and_subset() -> None:
    logs = ramp(6)
    ordered = logs.sorted_by_time()
    np.testing.assert_array_equal(ordered.timestamp, np.arange(6))
    tied = Logs(**{**vars(logs), "timestamp": np.zeros(6), "user": np.array([3, 1, 2, 1, 0, 4])})
    np.testing.assert_array_equal(tied.sorted_by_time().user, [0, 1, 1, 2, 3, 4])
    part = logs.subset(logs.timestamp < 2)
    assert part.num_events == 2 and part.num_users == 5 and part.item_ids is logs.item_ids
    with pytest.raises(ValueError, match=r"mask: expected a boolean array of shape \(6,\)"):
        logs.subset(np.array([0, 1]))
    with pytest.raises(ValueError, match=r"Logs\.item: expected 6 entries"):
        Logs(**{**vars(logs), "item": np.zeros(5, np.int64)})


def test_time_split_is_global_in_time() -> None:
    train, test = time_split(ramp(100), 0.2)
    assert (train.num_events, test.num_events) == (80, 20)
    assert train.timestamp.max() < test.timestamp.min()
    assert train.num_users == test.num_users == 5 and train.num_items == test.num_items == 1
    train, test = time_split(ramp(10), 0.5)
    assert (train.num_events, test.num_events) == (5, 5)


@pytest.mark.parametrize("frac", [0, 1, -0.1, 1.5, float("nan"), True, "0.2"])
def test_time_split_rejects_a_holdout_outside_0_1(frac: object) -> None:
    with pytest.raises(ValueError, match=r"holdout_frac: expected a number in \(0, 1\)"):
        time_split(ramp(10), frac)  # type: ignore[arg-type]


def test_time_split_rejects_an_empty_part() -> None:
    logs = ramp(10)
    same_time = Logs(**{**vars(logs), "timestamp": np.full(10, 5.0)})
    with pytest.raises(ValueError, match=r"holdout_frac: 0.2 holds out no events.*10 of 10 events share it"):
        time_split(same_time, 0.2)


def test_check_holdout_users() -> None:
    logs = ramp(10)
    user = np.array([0, 0, 1, 1, 2, 2, 3, 0, 4, 1])
    train, test = time_split(Logs(**{**vars(logs), "user": user, "timestamp": np.arange(10.0)}), 0.3)
    np.testing.assert_array_equal(test.user, [0, 4, 1])
    np.testing.assert_array_equal(check_holdout_users(train, test), [True, False, True])
    other = Logs(**{**vars(test), "user_ids": np.arange(1, 6)})
    with pytest.raises(ValueError, match="test: expected the same user table as train"):
        check_holdout_users(train, other)


# ---------------------------------------------------------------------------------------------------------------------
# Errors: each starts with the file and names what was wrong where


def test_missing_paths_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nowhere: no such file or directory"):
        load_logs(tmp_path / "nowhere", "movielens-100k")
    with pytest.raises(ValueError, match=r"empty_dir: expected a directory holding u\.data, found no u\.data"):
        load_logs((tmp_path / "empty_dir").mkdir() or tmp_path / "empty_dir", "movielens-100k")
    with pytest.raises(ValueError, match=r"log\.tsv: unknown format 'tsv'; expected one of " + ", ".join(FORMATS)):
        load_logs(tmp_path / "log.tsv", "tsv")
    log = write(tmp_path / "log.csv", "user,item,timestamp,click\n1,2,3,1\n")
    with pytest.raises(ValueError, match=r"gone\.csv: no such file \(the item file\)"):
        load_logs(log, "csv", items=tmp_path / "gone.csv")
    with pytest.raises(ValueError, match=r"log\.json: expected a \.csv or \.parquet file, got suffix '\.json'"):
        load_logs(write(tmp_path / "log.json", "{}"), "csv")


def test_pandas_missing_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r'pip install "metarec\[calibrate\]"'):
        load_logs(write(tmp_path / "log.csv", "user,item,timestamp,click\n1,2,3,1\n"), "csv")


def test_missing_columns_are_named_with_those_found(tmp_path: Path) -> None:
    log = write(tmp_path / "log.csv", "user,item,when\n1,2,3\n")
    with pytest.raises(
        ValueError, match=r"log\.csv: missing column 'timestamp', 'rating' or 'click'; .*found user, item, when"
    ):
        load_logs(log, "csv")
    folder = tmp_path / "latest"
    folder.mkdir()
    write(folder / "ratings.csv", "userId,movieId,timestamp\n1,2,3\n")
    with pytest.raises(ValueError, match=r"ratings\.csv: missing column 'rating'; .*found userId, movieId, timestamp"):
        load_logs(folder, "movielens-latest")
    items = write(tmp_path / "items.csv", "id,text\n1,a\n")
    with pytest.raises(ValueError, match=r"items\.csv: missing column 'item'; .*found id, text"):
        load_logs(write(tmp_path / "ok.csv", "user,item,timestamp,click\n1,2,3,1\n"), "csv", items=items)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "1\t2\t3\t4\n5\t6\t7\t8\t9\n",
            r"line 2: expected 4 fields separated by tab \(user, item, rating, timestamp\), got 5",
        ),
        ("1\t2\t3\t4\n\n5\t6\t7\n", r"line 3: expected 4 fields separated by tab .*, got 3"),
        ("1\t2\t3\t4\t5\n6\t7\t8\t9\n", r"line 1: expected 4 fields .*, got 5"),  # pandas would cut it silently
        ("1,2,3,4\n", r"line 1: expected 4 fields .*, got 1"),
    ],
)
def test_rating_rows_with_the_wrong_number_of_fields(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path / "u.data", text)
    with pytest.raises(ValueError, match=r"u\.data: " + message):
        load_logs(tmp_path, "movielens-100k")


def test_wrong_number_of_fields_in_other_files(tmp_path: Path) -> None:
    write(tmp_path / "ratings.dat", "1::2::3::4\n1::2::3\n")
    with pytest.raises(ValueError, match=r"ratings\.dat: line 2: expected 4 fields separated by '::' .*, got 3"):
        load_logs(tmp_path, "movielens-1m")
    log = write(tmp_path / "log.csv", "user,item,timestamp,click\n1,2,3,1\n1,3,4,1,9\n")
    with pytest.raises(ValueError, match=r"log\.csv: line 3: expected as many fields as the header, got 5"):
        load_logs(log, "csv")
    write(tmp_path / "u.data", "1\t2\t3\t4\n")
    write(tmp_path / "u.item", u_item_line(2, "A", [1]) + "3|B|x\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"u\.item: line 2: expected 24 fields separated by '\|' .*, got 3"):
        load_logs(tmp_path, "movielens-100k")


@pytest.mark.parametrize(
    ("timestamps", "line", "got"),
    [
        (["10", "11", "soon"], 4, "'soon'"),  # numbers, then not a number
        (["2024-01-01", "2024-13-45", "2024-01-02"], 3, "'2024-13-45'"),  # dates, then not a date
        (["10", "NaN", "12"], 3, "'NaN'"),
        (["10", "11", "-5"], 4, "-5"),
        (["10", "", "12"], 3, "an empty value"),
        (["10", "inf", "12"], 3, "inf"),
    ],
)
def test_bad_timestamps_name_the_column_and_line(tmp_path: Path, timestamps: list[str], line: int, got: str) -> None:
    rows = "".join(f"1,{k},{t},1\n" for k, t in enumerate(timestamps))
    log = write(tmp_path / "log.csv", "user,item,timestamp,click\n" + rows)
    with pytest.raises(
        ValueError, match=rf"log\.csv: column 'timestamp', line {line}: expected seconds since .*, got {got}"
    ):
        load_logs(log, "csv")


def test_bad_numeric_timestamps_in_movielens(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "1\t2\t3\t100\n1\t3\t4\t-1\n")
    with pytest.raises(ValueError, match=r"u\.data: column 'timestamp', line 2: expected seconds since .*, got -1"):
        load_logs(tmp_path, "movielens-100k")


@pytest.mark.parametrize(
    ("header", "values", "message"),
    [
        ("rating", ["4", "inf"], r"column 'rating', line 3: expected a finite number, got inf"),
        ("rating", ["4", "good"], r"column 'rating', line 3: expected a finite number, got 'good'"),
        ("rating", ["4", ""], r"column 'rating', line 3: expected a finite number, got an empty value"),
        ("click", ["1", "2"], r"column 'click', line 3: expected 0 or 1, got 2"),
        ("click", ["yes", "1"], r"column 'click', line 2: expected 0 or 1, got 'yes'"),
    ],
)
def test_bad_ratings_and_clicks(tmp_path: Path, header: str, values: list[str], message: str) -> None:
    rows = "".join(f"1,{k},{k},{v}\n" for k, v in enumerate(values))
    log = write(tmp_path / "log.csv", f"user,item,timestamp,{header}\n" + rows)
    with pytest.raises(ValueError, match=r"log\.csv: " + message):
        load_logs(log, "csv")


def test_bad_ids_in_movielens(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\nu1,2,3,5\n")
    with pytest.raises(ValueError, match=r"ratings\.csv: column 'userId', line 3: expected an integer id, got 'u1'"):
        load_logs(tmp_path, "movielens-latest")


def test_duplicate_events_name_both_lines(tmp_path: Path) -> None:
    log = write(tmp_path / "log.csv", "user,item,timestamp,rating\n1,2,10,4\n1,3,10,4\n2,2,10,4\n1,2,10,5\n1,3,10,1\n")
    with pytest.raises(
        ValueError, match=r"log\.csv: line 2 and line 5 are the same event \(user 1, item 2, timestamp 10\)"
    ):
        load_logs(log, "csv")


def test_empty_logs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"log\.csv: the log holds no events"):
        load_logs(write(tmp_path / "log.csv", "user,item,timestamp,rating\n"), "csv")
    with pytest.raises(ValueError, match=r"empty\.csv: the file is empty; expected a header line"):
        load_logs(write(tmp_path / "empty.csv", ""), "csv")
    write(tmp_path / "u.data", "\n")
    with pytest.raises(ValueError, match=r"u\.data: the log holds no events"):
        load_logs(tmp_path, "movielens-100k")


def test_bad_item_files(tmp_path: Path) -> None:
    log = write(tmp_path / "log.csv", "user,item,timestamp,click\n1,a,3,1\n")
    twice = write(tmp_path / "twice.csv", "item,text\na,x\nb,y\na,z\n")
    with pytest.raises(ValueError, match=r"twice\.csv: column 'item': item 'a' appears twice, on line 2 and line 4"):
        load_logs(log, "csv", items=twice)
    words = write(tmp_path / "words.csv", "item,size\na,1\nb,big\n")
    with pytest.raises(
        ValueError, match=r"words\.csv: column 'size', line 3: expected a number \(item features are numeric\)"
    ):
        load_logs(log, "csv", items=words)
    write(tmp_path / "movies.csv", "movieId,title,genres\n1,A,Drama\n1,B,Comedy\n")
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,3,4\n")
    with pytest.raises(ValueError, match=r"movies\.csv: column 'movieId': item 1 appears twice, on line 2 and line 3"):
        load_logs(tmp_path, "movielens-latest")
