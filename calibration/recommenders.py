"""The standard recommenders that ``metarec validate`` ranks: trained on the past of a log, scored on its future.

Each is fitted on the clicked training events only and scores every item for a batch of users (``[U, M]``,
float32, higher first):

* ``random``: uniform scores from the validation's generator;
* ``popularity``: the item's number of training events;
* ``recent-popularity``: the same count over the latest ``recent_frac`` of the training events;
* ``item-knn``: item-based k nearest neighbours with cosine similarity (``implicit``'s ``CosineRecommender``);
* ``als``: implicit-feedback matrix factorisation by alternating least squares (``implicit``'s
  ``AlternatingLeastSquares``, Hu, Koren and Volinsky 2008).

The two learned ones come from ``implicit`` (the ``calibrate`` extra). Both see each user's training items as a
binary user-item matrix; a user without training events gets the popularity ranking from them (their scores
are all 0, and every score gets the item's popularity as a tie-breaker below the smallest gap that matters).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import Field

from metarec.config import FrozenConfig

STANDARD = ("random", "popularity", "recent-popularity", "item-knn", "als")

Scorer = Callable[[np.ndarray], np.ndarray]  # user codes [U] -> scores [U, M] float32


class RecommenderConfig(FrozenConfig):
    """How the standard recommenders are trained (``metarec validate --set recommenders.KEY=VALUE``)."""

    recent_frac: float = Field(
        0.25, gt=0, le=1, description="recent-popularity counts the latest share of the training events."
    )
    knn_neighbours: int = Field(100, ge=1, description="item-knn: neighbours kept per item.")
    als_factors: int = Field(64, ge=1, description="als: latent factors.")
    als_iterations: int = Field(15, ge=1, description="als: alternating passes.")
    als_regularization: float = Field(0.05, ge=0, description="als: L2 penalty on the factors.")
    als_alpha: float = Field(1.0, gt=0, description="als: confidence of an observed interaction.")


def user_item_csr(user: np.ndarray, item: np.ndarray, num_users: int, num_items: int) -> Any:
    """The binary user-item matrix (``scipy.sparse.csr_matrix``, float32) of the events."""
    from scipy.sparse import csr_matrix

    matrix = csr_matrix(
        (np.ones(len(user), dtype=np.float32), (user, item)), shape=(num_users, num_items), dtype=np.float32
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _tie_break(counts: np.ndarray) -> np.ndarray:
    """The popularity ranks scaled into [0, 1e-6): added to scores that tie, they order the ties by popularity."""
    ranks = np.argsort(np.argsort(counts, kind="stable"), kind="stable").astype(np.float64)
    return (ranks / max(len(counts), 1) * 1e-6).astype(np.float32)


def _implicit_scorer(model: Any, user_items: Any, counts: np.ndarray) -> Scorer:
    """Full score rows from an ``implicit`` model, ties broken by popularity."""
    num_items = user_items.shape[1]
    tie = _tie_break(counts)

    def scores(users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        out = np.zeros((len(users), num_items), dtype=np.float32)
        if len(users):
            ids, values = model.recommend(users, user_items[users], N=num_items, filter_already_liked_items=False)
            ids, values = np.asarray(ids, dtype=np.int64), np.asarray(values, dtype=np.float32)
            valid = ids >= 0  # implicit pads a short answer with id -1 (and the lowest float score)
            out[np.nonzero(valid)[0], ids[valid]] = values[valid]
        return out + tie[None, :]

    return scores


def check_recommenders(names: tuple[str, ...]) -> None:
    """Refuses unknown names, and the learned ones where ``implicit`` is missing, before any work."""
    unknown = sorted(set(names) - set(STANDARD))
    if unknown:
        raise ValueError(f"recommenders: unknown {', '.join(unknown)}; expected some of {', '.join(STANDARD)}")
    if {"item-knn", "als"} & set(names):
        try:
            import implicit  # noqa: F401
        except ImportError as err:
            raise ImportError(
                f"recommenders: item-knn and als need the 'implicit' package: pip install 'metarec[calibrate]' ({err})"
            ) from None


def fit_recommenders(
    user: np.ndarray,
    item: np.ndarray,
    timestamp: np.ndarray,
    num_users: int,
    num_items: int,
    config: RecommenderConfig,
    generator: np.random.Generator,
    names: tuple[str, ...] = STANDARD,
) -> dict[str, Scorer]:
    """The named recommenders trained on the events ``(user, item, timestamp)`` (codes ``< num_users``,
    ``< num_items``); ``generator`` draws the random recommender's scores and seeds ALS."""
    check_recommenders(names)
    counts = np.bincount(item, minlength=num_items).astype(np.float32)
    cut = np.quantile(timestamp, 1.0 - config.recent_frac) if len(timestamp) else 0.0
    recent = np.bincount(item[timestamp >= cut], minlength=num_items).astype(np.float32)
    tie = _tie_break(counts)
    out: dict[str, Scorer] = {}
    for name in names:
        if name == "random":
            out[name] = lambda users: generator.random((len(users), num_items), dtype=np.float32)
        elif name == "popularity":
            out[name] = lambda users: np.repeat((counts + tie)[None, :], len(users), axis=0)
        elif name == "recent-popularity":  # ties (items not seen lately) fall back on all-time popularity
            out[name] = lambda users: np.repeat((recent + counts / (counts.max() + 1.0))[None, :], len(users), axis=0)
        else:
            out[name] = _fit_implicit(name, user, item, num_users, num_items, config, generator, counts)
    return out


def _fit_implicit(
    name: str,
    user: np.ndarray,
    item: np.ndarray,
    num_users: int,
    num_items: int,
    config: RecommenderConfig,
    generator: np.random.Generator,
    counts: np.ndarray,
) -> Scorer:
    from implicit.als import AlternatingLeastSquares  # check_recommenders has named a missing package
    from implicit.nearest_neighbours import CosineRecommender
    from threadpoolctl import threadpool_limits

    user_items = user_item_csr(user, item, num_users, num_items)
    with threadpool_limits(1, "blas"), warnings.catch_warnings():  # implicit's threads do the work, not BLAS's
        warnings.filterwarnings("ignore", message="Method expects CSR input")  # its own conversion inside fit
        if name == "item-knn":
            model = CosineRecommender(K=config.knn_neighbours)
            model.fit(user_items, show_progress=False)
        else:
            model = AlternatingLeastSquares(
                factors=config.als_factors,
                regularization=config.als_regularization,
                iterations=config.als_iterations,
                alpha=config.als_alpha,
                random_state=int(generator.integers(2**31 - 1)),
                use_gpu=False,
            )
            model.fit(user_items, show_progress=False)
    return _implicit_scorer(model, user_items, counts)
