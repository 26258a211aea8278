"""What the adaptation protocol (:mod:`metarec.meta.evaluate`) reports of a run besides the mean curves: the
cumulative regret after a number of interactions, what happens around the preference shift, and how the
populations fare one by one (the worst decile beside the mean)."""

from __future__ import annotations

from typing import Any

import numpy as np

from metarec.stats import mean_interval

REGRET_AFTER = (10, 50, 100)  # interactions after which every method's cumulative regret is reported


def cumulative_regret(regret: np.ndarray) -> np.ndarray:
    """``[len(REGRET_AFTER)]``: the per-step regret, each step's mean over the users still present, summed
    over the first 10, 50 and 100 interactions (so it counts the users a method kept, and from interaction
    ``shift_at`` on it includes the shift); NaN where no user was left at that interaction."""
    out = np.full(len(REGRET_AFTER), np.nan)
    for i, n in enumerate(REGRET_AFTER):
        if n <= len(regret) and not np.isnan(regret[n - 1]):
            out[i] = float(np.nansum(regret[:n]))
    return out


def regret_table(per_seed: np.ndarray) -> dict[str, Any]:
    """``{"10": {"mean", "ci95"}, ...}`` over the seeds' cumulative regrets (``[seeds, len(REGRET_AFTER)]``)."""
    mean, ci = mean_interval(per_seed)
    return {str(n): {"mean": mean[i], "ci95": ci[i]} for i, n in enumerate(REGRET_AFTER)}


def shift_summary(run: dict[str, Any], config: Any) -> dict[str, Any]:
    """Around the shift (``config``: an :class:`~metarec.meta.evaluate.EvalConfig`): the pre-shift level and the
    regret over the ``window`` interactions before and after it, the dip (lowest expected reward after the shift
    over the level) and the interactions until expected reward is back at 90% of the level (0: it never fell
    below; None: not in the run)."""
    s, w = config.shift_at, config.window
    level = float(np.nanmean(run["expected"][max(0, s - w) : s]))
    after = run["expected"][s:]
    back = np.nonzero(np.nan_to_num(after, nan=-np.inf) >= 0.9 * level)[0]
    return {
        "pre_shift_level": level,
        "regret_before_shift": float(np.nansum(run["regret"][max(0, s - w) : s])),
        "regret_after_shift": float(np.nansum(run["regret"][s : s + w])),
        "dip": float(np.nanmin(after[:w]) / level) if level > 0 else None,
        "interactions_to_recover_90": int(back[0]) if len(back) else None,
    }


#: Sessions of a user's life that a population's return sums (fewer where the protocol runs fewer).
POPULATION_SESSIONS = 10


def population_summary(
    method: list[np.ndarray], random: list[np.ndarray], oracle: list[np.ndarray]
) -> dict[str, Any]:
    """Each held-out population's normalised return and the worst decile of them. Arguments: per seed, the
    ``[tasks, sessions]`` mean return per session of the method, random and the oracle on the same users.

    A population's normalised return is ``(R - R_random) / (R_oracle - R_random)`` with ``R`` its users' return
    summed over sessions 1 to 10 (random 0, oracle 1; None where the oracle does no better than random). The
    worst decile is the mean of the lowest tenth of them (at least one), over every seed's populations: how the
    method does where it does worst."""
    values = []
    for m, low, high in zip(method, random, oracle, strict=True):
        k = min(POPULATION_SESSIONS, m.shape[1])
        r, lo, hi = (x[:, :k].sum(axis=1) for x in (m, low, high))
        values.append(np.where(hi - lo > 0, (r - lo) / np.where(hi - lo > 0, hi - lo, 1.0), np.nan))
    flat = np.sort(np.concatenate(values)[~np.isnan(np.concatenate(values))])
    worst = flat[: max(1, len(flat) // 10)]
    return {
        "sessions": min(POPULATION_SESSIONS, method[0].shape[1]),
        "normalised_return": [[None if np.isnan(v) else float(v) for v in seed] for seed in values],
        "mean": float(flat.mean()) if len(flat) else None,
        "worst_decile": float(worst.mean()) if len(flat) else None,
    }
