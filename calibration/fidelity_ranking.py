"""Next-item prediction: recall@k and NDCG@k of a score matrix, and the popularity baseline's scores."""

from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# next-item prediction


def ranking_metrics(
    scores: np.ndarray, seen: np.ndarray, target: np.ndarray, k: int = 10, chunk_size: int = 4096
) -> dict[str, float]:
    """Recall@k and NDCG@k of held-out next items under a score matrix, excluding the items already seen.

    Each user's top ``k`` is taken with ``np.argpartition`` (ties at the k-th score broken as it breaks them, which is
    deterministic for a given input), so that exactly ``k`` items are recommended. Items with a NaN score rank
    last. A target the user has already seen cannot be recommended and counts as a miss. The users are processed
    ``chunk_size`` rows at a time, so that besides the inputs only a few ``[chunk_size, M]`` arrays are allocated.

    Args:
        scores: Scores ``[U, M]``, higher meaning more likely to be the next item (may be a broadcast view).
        seen: Items each user interacted with before the target ``[U, M]``, bool.
        target: The held-out next item of each user ``[U]``; users with a negative target are skipped.
        k: Length of the recommended list; a list of all ``M`` items when ``k > M`` (the keys still say ``k``).
        chunk_size: Users processed at a time.

    Returns:
        ``recall@k``: share of the evaluated users whose target is in their top ``k``; ``ndcg@k``: mean of
        ``1 / log2(rank + 1)`` (rank 1-based) for hits and 0 for misses; ``users``: the evaluated users. Recall and
        NDCG are NaN when no user is evaluated.

    Raises:
        ValueError: Naming the argument, if the shapes do not match, ``seen`` is not bool, ``target`` is not
            integer or has an item ``>= M``, or ``k`` or ``chunk_size`` is below 1.
    """
    scores, seen, target = np.asarray(scores), np.asarray(seen), np.asarray(target)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected a 2-D array [users, items], got shape {scores.shape}")
    num_users, num_items = scores.shape
    if seen.shape != scores.shape:
        raise ValueError(f"seen: expected the shape of scores {scores.shape}, got {seen.shape}")
    if seen.dtype != np.bool_:
        raise ValueError(f"seen: expected a bool array, got dtype {seen.dtype}")
    if target.shape != (num_users,):
        raise ValueError(f"target: expected shape ({num_users},), got {target.shape}")
    if target.size and not np.issubdtype(target.dtype, np.integer):
        raise ValueError(f"target: expected integer item codes, got dtype {target.dtype}")
    if target.size and int(target.max()) >= num_items:
        raise ValueError(f"target: expected items below {num_items}, got {int(target.max())}")
    if k < 1:
        raise ValueError(f"k: expected at least 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected at least 1, got {chunk_size}")
    listed = min(k, num_items)
    dtype = scores.dtype if np.issubdtype(scores.dtype, np.floating) else np.float64
    discount = 1.0 / np.log2(np.arange(2, listed + 2))  # [listed]: 1 / log2(rank + 1)

    hits, gain, evaluated = 0, 0.0, 0
    for start in range(0, num_users, chunk_size):
        rows = np.flatnonzero(target[start : start + chunk_size] >= 0) + start
        if rows.size == 0:
            continue
        masked = scores[rows].astype(dtype, copy=False)  # [C, M]; indexing with rows already copies
        masked[seen[rows] | np.isnan(masked)] = -np.inf
        top = np.argpartition(masked, num_items - listed, axis=1)[:, num_items - listed :]  # [C, listed], unordered
        by_score = np.argsort(-np.take_along_axis(masked, top, axis=1), axis=1, kind="stable")
        ranked = np.take_along_axis(top, by_score, axis=1)  # [C, listed], best first
        match = ranked == target[rows, None]
        hit = match.any(axis=1) & ~seen[rows, target[rows]]
        hits += int(hit.sum())
        gain += float(discount[match[hit].argmax(axis=1)].sum())
        evaluated += rows.size
    if evaluated == 0:
        return {f"recall@{k}": math.nan, f"ndcg@{k}": math.nan, "users": 0}
    return {f"recall@{k}": hits / evaluated, f"ndcg@{k}": gain / evaluated, "users": evaluated}


def popularity_scores(train_item_counts: np.ndarray, num_users: int) -> np.ndarray:
    """The popularity baseline's scores: every user scores an item by its training count.

    Args:
        train_item_counts: Interactions per item in the training events ``[M]``.
        num_users: Number of users to score.

    Returns:
        A read-only broadcast view ``[num_users, M]`` of ``train_item_counts``: no ``num_users * M`` copy is made.

    Raises:
        ValueError: If ``train_item_counts`` is not 1-D or ``num_users`` is negative.
    """
    counts = np.asarray(train_item_counts)
    if counts.ndim != 1:
        raise ValueError(f"train_item_counts: expected a 1-D array, got shape {counts.shape}")
    if num_users < 0:
        raise ValueError(f"num_users: expected a non-negative number, got {num_users}")
    return np.broadcast_to(counts, (num_users, counts.size))
