"""The logs' side of ``metarec validate-ab``: what two policies' logs of one period say about their A/B lift, and
the population fitted to the control's logs alone that the simulated A/B test runs on.

Each log is one arm of a real A/B test: the rows its policy showed (``click`` 0 or 1) over the same period. The
**observed lift** is the treatment's click-through rate (clicks per shown row) over the control's, minus 1.
Its interval is a percentile bootstrap that resamples each log's users with replacement, independently per
log: the user is the unit, as in the logs' own randomisation. It assumes users are independent given the
logged policies; a policy that learned across users (Bernoulli Thompson sampling) made its users dependent, and
that run-to-run randomness of its learning is not in this interval (the simulated test's replicates count it).

The simulated test's traffic follows the logs where not set: each arm shows as many slates as the treatment's log
holds, to users who come for one session each (one day) of at most as many slates as the log's users saw on average
(the population's ``max_session_steps``; as many users as that takes, a session's length measured by a probe), on
slates as long as the control's longest (rows of one user and timestamp, or the last position shown where the log
has positions), from every item of the catalogue as candidates (up to :data:`MAX_CANDIDATES`). Sessions as short as
the logs' keep a learner shared across users from learning each user's own taste within a long session, which a log
of many users does not let it do. One session a user keeps the traffic the same in both arms, as in the logs, where
each arm's click-through rate is over the impressions it was given; over several days a simulated arm that pleases
its users brings more of them back, and its click-through rate then also weighs the users who return.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator
from scipy import stats

from metarec.calibration.fit import FitConfig, calibrate
from metarec.calibration.fit_utility import slate_starts
from metarec.calibration.logs import Logs
from metarec.calibration.run import fitted_users
from metarec.config import FrozenConfig
from metarec.envs.calibrated import save_population, with_population_fields

MAX_CANDIDATES = 1000  # a larger catalogue is offered through the population's own candidate count
PROBE_USERS = 256  # users of the probe that measures a simulated user's slates
MIN_FIT_HALVES = 10  # the fewest calibrations on halves of the users an interval rests on


class ValidateABConfig(FrozenConfig):
    """What ``metarec validate-ab`` does (``--set KEY=VALUE``; ``fit.KEY`` reaches the fit)."""

    users: int | None = Field(
        None, ge=2, description="Simulated users per arm (None: as many as show the treatment log's slates)."
    )
    days: int | None = Field(None, ge=1, description="Simulated days, a session each (None: 1).")
    slates_per_user: int | None = Field(
        None, ge=1, description="Most slates in a simulated session (None: the treatment log's slates per user)."
    )
    slate_size: int | None = Field(None, ge=1, description="Slate length (None: the control log's longest slate).")
    num_candidates: int | None = Field(
        None, ge=1, description=f"Candidates per slate (None: every item, up to {MAX_CANDIDATES})."
    )
    replicates: int = Field(10, ge=2, description="Independent replicates of the simulated test.")
    fit_halves: int = Field(
        0,
        ge=0,
        description="Calibrations on random halves of the control log's users (drawn without replacement), each "
        "running its own simulated test. The predicted interval is then the whole log's lift ± t·sd of theirs (a "
        "delete-d jackknife, d = half the users), which counts the fit's uncertainty too (0: one calibration; the "
        f"interval counts the simulation's randomness only; else at least {MIN_FIT_HALVES}).",
    )
    bootstrap: int = Field(2000, ge=100, description="Bootstrap resamples of the observed lift.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Two-sided level of both intervals.")
    seed: int = Field(0, ge=0, description="Seeds the fit, the simulated test and the bootstraps.")
    fit: FitConfig = Field(default_factory=FitConfig)

    @model_validator(mode="before")
    @classmethod
    def _no_fit_bootstrap(cls, values: Any) -> Any:
        if isinstance(values, dict) and "fit_bootstrap" in values:
            raise ValueError("fit_bootstrap: replaced by fit_halves (calibrations on halves of the users, drawn "
                             "without replacement, around the whole log's lift); set fit_halves")  # fmt: skip
        return values


def check_fit_halves(config: ValidateABConfig) -> None:
    if 0 < config.fit_halves < MIN_FIT_HALVES:
        raise ValueError(f"fit_halves: expected 0 or at least {MIN_FIT_HALVES}, got {config.fit_halves}")


def half_of_users(logs: Logs, rng: np.random.Generator) -> Logs:
    """The log of ``num_users // 2`` of its users, drawn without replacement, with every row of theirs (codes
    ``0..`` in the order of their old codes)."""
    users = np.sort(rng.choice(np.unique(logs.user), len(np.unique(logs.user)) // 2, replace=False))
    rows = np.flatnonzero(np.isin(logs.user, users))
    code = np.searchsorted(users, logs.user[rows])
    return Logs(code, logs.item[rows], logs.timestamp[rows], logs.rating[rows], logs.click[rows],
                np.arange(len(users)), logs.item_ids, logs.item_features, logs.item_text, logs.feature_names,
                None if logs.position is None else logs.position[rows])  # fmt: skip


def half_sample_interval(whole: float, halves: list[float], users: int, alpha: float) -> list[float]:
    """``whole ± t·sd``: the delete-d jackknife (Shao and Wu, 1989) of a statistic computed on every one of
    ``users`` users (``whole``) and on random subsets of ``users // 2`` of them (``halves``). Its variance is
    ``r / d`` times the subsets' (``r`` kept, ``d`` left out), t on ``len(halves) - 1`` degrees of freedom.
    Subsets without replacement never hold a user twice, which a bootstrap resample of users does (and which made
    a calibration see more spread between items than the log holds); the interval is centred on the whole log's
    statistic, not on the subsets', whose calibrations shrink more (fewer rows)."""
    finite = np.asarray([v for v in halves if math.isfinite(v)])
    if len(finite) < 2 or not math.isfinite(whole):
        return [math.nan, math.nan]
    kept = users // 2
    half_width = stats.t.ppf(1 - alpha / 2, len(finite) - 1) * math.sqrt(kept / (users - kept) * finite.var(ddof=1))
    return [whole - half_width, whole + half_width]


def check_impressions(logs: Logs, which: str) -> None:
    """A ValueError unless ``logs`` hold shown rows that were not clicked (a click-through rate needs them)."""
    if logs.num_events == 0:
        raise ValueError(f"{which}: the log holds no rows; expected the rows its policy showed")
    if not np.any(logs.click <= 0):
        raise ValueError(
            f"{which}: every row is a click; expected the rows the policy showed, clicked or not (click 0 or 1), "
            "since a click-through rate needs the impressions"
        )


def summary(logs: Logs) -> dict[str, Any]:
    """Users, rows, slates, clicks, click-through rate (clicks per row) and the period of a log."""
    slates = len(slate_starts(logs)[1]) if logs.num_events else 0
    return {
        "users": int(logs.num_users),
        "rows": int(logs.num_events),
        "slates": int(slates),
        "clicks": int(logs.click.sum()),
        "ctr": float(logs.click.mean()),
        "first": float(logs.timestamp.min()),
        "last": float(logs.timestamp.max()),
    }


def longest_slate(logs: Logs) -> int:
    """The most rows one user has at one timestamp, or the last position shown where the log has positions
    (a log sampled by rows keeps its positions, not its slates), whichever is more."""
    shown = 0 if logs.position is None else int(logs.position.max()) + 1
    return max(_most_rows_at_once(logs), shown)


def _most_rows_at_once(logs: Logs) -> int:
    """The most rows one user has at one timestamp."""
    starts = slate_starts(logs)[1]
    return int(np.diff(np.r_[starts, logs.num_events]).max())


def observed_lift(control: Logs, treatment: Logs, bootstrap: int, alpha: float, seed: int) -> dict[str, Any]:
    """The treatment's click-through rate over the control's, minus 1, with a percentile bootstrap interval over
    each log's users (see the module docstring)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    rates = [_user_bootstrap(logs, bootstrap, rng) for logs in (control, treatment)]
    with np.errstate(divide="ignore", invalid="ignore"):
        lifts = rates[1] / rates[0] - 1.0
    lift = float(treatment.click.mean() / control.click.mean() - 1.0) if control.click.sum() > 0 else math.nan
    defined = lifts[~np.isnan(lifts)]  # +inf (a resample of the control without a click) stays in the tail
    low, high = np.quantile(defined, [alpha / 2, 1 - alpha / 2]) if len(defined) else (math.nan, math.nan)
    return {
        "lift": lift,
        "ci": [float(low), float(high)],
        "unit": "user",
        "bootstrap": bootstrap,
        "control_resamples_without_clicks": int(np.sum(rates[0] == 0)),
    }


def _user_bootstrap(logs: Logs, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[resamples]`` click-through rates of the log with its users drawn with replacement."""
    clicks = np.bincount(logs.user, weights=logs.click, minlength=logs.num_users)
    rows = np.bincount(logs.user, minlength=logs.num_users).astype(np.float64)
    present = rows > 0
    clicks, rows = clicks[present], rows[present]
    n = len(rows)
    out = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, resamples, chunk):
        draw = rng.integers(0, n, (min(chunk, resamples - start), n))
        out[start : start + len(draw)] = clicks[draw].sum(axis=1) / rows[draw].sum(axis=1)
    return out


def slate_plan(control: Logs, config: ValidateABConfig) -> dict[str, Any]:
    """The simulated test's slate size and candidates (see the module docstring), and whether the control's rows
    were sampled from its slates (positions up to ``slate_size``, but no user with that many rows at one time):
    then a slate is ``slate_size`` rows and its click rate ``1 - (1 - row rate) ** slate_size``. A ValueError
    names a size the logs cannot take."""
    candidates = config.num_candidates or min(control.num_items, MAX_CANDIDATES)
    slate = config.slate_size or longest_slate(control)
    if candidates > control.num_items:
        raise ValueError(f"num_candidates: expected at most the logs' {control.num_items} items, got {candidates}")
    if slate > candidates:
        raise ValueError(f"slate_size: {slate} is more than the {candidates} candidates; expected at most that many")
    sampled = control.position is not None and _most_rows_at_once(control) < slate  # no slate is there whole
    return {"slate_size": slate, "num_candidates": candidates, "rows_sampled": sampled}


def logged_slates(logs: Logs, plan: dict[str, Any]) -> float:
    """The slates a log holds: its rows over the slate size where rows were sampled from slates."""
    return logs.num_events / plan["slate_size"] if plan["rows_sampled"] else float(summary(logs)["slates"])


def fit_control(
    control: Logs, config: ValidateABConfig, plan: dict[str, Any], out: Path, progress: bool = False, seed: int = 0
) -> dict[str, Any]:
    """Calibrates on every row of the control's log (fit seeded ``seed``) and writes the population to ``out``;
    returns the env keyword arguments of the simulated test and what was fitted. The fit's slate size and
    candidate count are the simulated test's, so its no-click utility gives the logged click rate on the slates
    the test shows (for rows sampled from slates, the rate of whole slates)."""
    update: dict[str, Any] = {"slate_size": plan["slate_size"], "num_candidates": plan["num_candidates"], "seed": seed}
    if plan["rows_sampled"]:
        update["slate_click_rate"] = float(1.0 - (1.0 - control.click.mean()) ** plan["slate_size"])
    calibration = calibrate(control, config.fit.model_copy(update=update), progress=progress)
    users = fitted_users(control, calibration)
    path = save_population(out, calibration.config, calibration.world, calibration.fit, users)
    return {
        "env_kwargs": {"population": str(path)},
        "num_items": calibration.config.catalog.num_items,
        **plan,
        "num_clusters": calibration.fit["num_clusters"],
        "click_rate_calibrated": calibration.fit.get("no_click", {}).get("click_rate"),
        "ctr_from_impressions": calibration.fit.get("ctr_from_impressions"),
    }


def traffic(
    config: ValidateABConfig, treatment: Logs, env_kwargs: dict[str, Any], control_agent: str, plan: dict[str, Any]
) -> dict[str, Any]:
    """Simulated users per arm, days, and the most slates in a user's session (see the module docstring), with the
    env keyword arguments that cut sessions there. Where not set: one day; as many slates a session as the
    treatment log's users saw on average; and as many users as give the treatment log's slates, a session being
    as long as the control's in a probe of :data:`PROBE_USERS` users."""
    days = config.days or 1
    slates = logged_slates(treatment, plan)
    per_user = config.slates_per_user or max(1, math.ceil(slates / treatment.num_users))
    kwargs = with_population_fields(env_kwargs, {"max_session_steps": per_user})
    out = {"days": days, "slates_per_user": per_user, "env_kwargs": kwargs}
    if config.users is not None:
        return {**out, "users": config.users, "session_length": None}
    from metarec.agents.evaluation import evaluate

    probe = evaluate("metarec/Calibrated-v0", control_agent, PROBE_USERS, seed=config.seed,
                     env_kwargs=with_population_fields(kwargs, {"num_sessions": days}), metrics=False)  # fmt: skip
    assert probe is not None  # one process
    length = float(probe["mean_length"])
    return {**out, "users": max(2, math.ceil(slates / max(length, 1.0))), "session_length": length}


def agreement(observed: dict[str, Any], predicted: dict[str, Any]) -> dict[str, Any]:
    """How the simulated test's lift compares with the logs'."""
    o, p = observed["lift"], predicted["lift"]
    (o_low, o_high), (p_low, p_high) = observed["ci"], predicted["ci"]
    finite = all(math.isfinite(x) for x in (o, p, o_low, o_high, p_low, p_high))
    return {
        "error": p - o,  # predicted minus observed lift
        "observed_in_predicted_ci": finite and p_low <= o <= p_high,
        "intervals_overlap": finite and p_low <= o_high and o_low <= p_high,
        "same_sign": finite and np.sign(p) == np.sign(o),
    }
