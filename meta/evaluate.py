"""The adaptation protocol: how fast does a method learn new users of populations it never saw?

For each evaluation seed, ``tasks`` populations of a held-out split are drawn (with ``sessions``
sessions per user) and ``users_per_task`` new users of each step as one
:class:`~metarec.envs.task_batch.TaskBatchVectorEnv`; every method meets the same users (same
seed). A user's return in session ``k`` is the engagement of that session, 0 once they have left
(intention to treat). The curve is normalised per session and seed so that the random recommender
is 0 and the oracle (who sees the true user state) is 1; the report gives its mean and a 95% t
interval over seeds.

Preference shift: in the same runs, every user still present at interaction ``shift_at`` has their
interests re-drawn (a new cluster, as the model's abrupt shifts do). Reported per method: the
pre-shift level (mean expected reward over users present, the ``window`` interactions before), the
regret summed over the ``window`` interactions before and after (oracle value minus the expected
reward of the slates shown), the dip (lowest expected reward after the shift over the level), and the
interactions until expected reward is back at 90% of the level (0 if it never fell below; None if
not within the run).

Every method meets the same populations and users in a seed, so the best meta-learner's lead over each
baseline is also reported paired: the mean over seeds of the per-seed difference of normalised returns
and its 95% t interval (``result["paired"]``). It is the sharper test of "ahead": the seeds' spread of
populations, which both methods share, drops out; the separate intervals of the two curves keep it.
The intervals are per session and per baseline (no correction for reading many at once), and the best
meta-learner is picked on the same runs, which favours it a little where meta-learners are close.

Each method also gets ``populations``: every population's normalised return over sessions 1-10, their mean and
worst decile (:func:`~metarec.meta.protocol_summary.population_summary`). On a split whose catalogs churn
(``meta-test-items``), each method also gets ``item_cold_start``: how it treats
the items that arrive during the runs (:mod:`metarec.agents.cold_start`), pooled over seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pydantic import Field

from metarec.agents.base import Recommender, arrived_items
from metarec.agents.cold_start import ItemColdStart, summarise
from metarec.agents.export import with_item_stats
from metarec.agents.metrics import SessionMetrics, session_summary
from metarec.agents.registry import make_recommender
from metarec.config import FrozenConfig
from metarec.envs.core.backend import torch_backend
from metarec.envs.task_batch import TaskBatchVectorEnv, logged_events
from metarec.meta.policy import Memory, RL2Policy
from metarec.meta.protocol_summary import cumulative_regret, population_summary, regret_table, shift_summary
from metarec.meta.tasks import TaskDistribution, batch_seed, task_batch
from metarec.meta.time_unit import TimeUnit
from metarec.parallel import EXACT_SCALE, Shard, add_exact
from metarec.stats import mean_interval

EVAL_SEED_OFFSET = 10_000  # evaluation seeds never coincide with meta-batch indices of training
#: What a meta-learner is compared with, paired by seed: the non-meta baselines, and the reference.
BASELINES = ("popular", "linucb", "thompson", "greedy", "finetune", "scratch")
REFERENCES = ("hbayes",)
#: The methods that meta-learn (what "the meta-learner" is picked among).
META_LEARNERS = ("rl2", "icl", "maml", "fomaml", "reptile")


class EvalConfig(FrozenConfig):
    """How methods are evaluated (the adaptation protocol)."""

    tasks: int = Field(8, ge=1, description="Held-out populations per seed.")
    users_per_task: int = Field(64, ge=1, description="New users per population.")
    seeds: int = Field(5, ge=2, description="Evaluation seeds (independent draws of populations and users).")
    shift_at: int = Field(30, ge=2, description="Interaction at which every user's interests shift.")
    window: int = Field(10, ge=1, description="Interactions before/after the shift that are measured.")
    max_steps: int = Field(400, ge=1, description="Longest run (interactions per user).")
    rl2_greedy: bool = Field(
        True,
        description="RL² shows its most probable slate (its memory adapts without sampling noise); the "
        "gradient methods always sample, since their policy-gradient step needs on-policy draws.",
    )


class RL2Recommender(Recommender):
    """An RL² policy as a :class:`Recommender`: the memory reads every response, persists across a
    user's sessions and is cleared for a new user. A policy with a population memory reads the beliefs of
    every user of a population: ``population`` consecutive users are one (all of them when None), and its
    users are then not independent. With ``time_unit`` (:mod:`metarec.meta.time_unit`) each population is served
    in the unit of time of the catalogues the policy trained on."""

    name = "rl2"

    def __init__(
        self, policy: RL2Policy, generator: torch.Generator, deterministic: bool = False, population: int | None = None,
        time_unit: TimeUnit | None = None,
    ) -> None:
        self.policy, self.generator, self.deterministic = policy, generator, deterministic
        self.population, self.time_unit = population, time_unit
        self.unit: torch.Tensor | None = None  # [B] this step's unit of time (with time_unit)
        self.shares_state_across_users = policy.population or policy.item_memory
        self.memory: Memory | None = None

    def place(self, shard: Shard | None) -> None:
        if shard is not None and self.shares_state_across_users:  # its memory would see this process's users only
            memory = "population memory" if self.policy.population else "item memory"
            raise ValueError(f"agent: {self.name}'s {memory} reads every user of a population, so it "
                             "serves in one process; run it without --nproc")  # fmt: skip
        super().place(shard)

    def reset(self, mask: torch.Tensor | None = None) -> None:
        if mask is None or self.memory is None:
            self.memory = None
            if self.time_unit is not None:
                self.time_unit.reset()
            return
        self.memory = self.policy.reset_memory(self.memory, mask)
        self.last_reward = self.last_reward.masked_fill(mask, 0.0)

    def act(self, observation: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        batch = observation["candidates"].shape[0]
        if self.memory is None:
            self.memory = self.policy.initial_memory(batch, observation["candidates"].device)
            self.last_reward = torch.zeros(batch, device=observation["candidates"].device)
        if self.time_unit is not None:  # the population's time in the unit of the catalogues it trained on
            self.unit = self.time_unit.scale(observation)
            observation = self.time_unit.apply(observation, self.unit)
        with torch.no_grad():
            hidden = self.policy.read(self.memory, observation, self.last_reward)
            beliefs = self.policy.believe(self.memory, observation, self.population or batch)
            logits, _ = self.policy.act_from(observation, hidden, beliefs)
            dist = self.policy.distribution(logits)
            rows_of = self.draws(self.generator, batch).rows_of()
            slate = dist.mode() if self.deterministic else dist.sample(self.generator, rows_of=rows_of)
            self.memory = self.policy.remember(hidden, self.memory.belief, observation, slate)
        return slate

    def slate_propensity(self, num_candidates: int) -> float | None:
        return 1.0 if self.deterministic else None

    def export_module(self, keys: list[str]) -> torch.nn.Module:
        from metarec.meta.export_step import RL2Step

        if self.time_unit is not None:
            raise ValueError("run: rl2.rescale_time measures each population's time as it serves; a policy that "
                             "serves with it is not exported (set rescale_time: false to export)")  # fmt: skip
        return RL2Step(self.policy, keys)

    def observe(self, reward: torch.Tensor, done: torch.Tensor, info: dict[str, Any]) -> None:
        if self.memory is None:
            raise RuntimeError("observe() before act()")
        self.last_reward = reward.float() if self.unit is None else reward.float() / self.unit
        # the belief learns only from the users this recommender served (info["active"], when given)
        self.memory = self.policy.learn(self.memory, self.last_reward, info["chosen_position"], info.get("active"))


class LoggedItemStats(Recommender):
    """Serves ``inner`` (a policy trained with ``item_stats``) on an environment without them: it logs
    the impressions, clicks and engagement of the slates it serves itself, pooled over its users, and
    appends the same three candidate features the task-batch environment would. What a production
    system does, so a meta-learned recommender can serve in an A/B test of one population.

    Only users marked in ``info["active"]`` (when given) are logged: the ones this recommender served.
    The counts and the engagement sums are int64 (engagement in fixed point,
    :func:`~metarec.parallel.add_exact`), so they are exact in any order, also summed over the
    processes of a run split across them.

    ``groups`` independent tables, one per contiguous block of ``B / groups`` users (of all the run's users
    when split across processes): ``groups`` learners that never see each other's users, stepped as one batch
    (independent replicates of an A/B test's arm, say), as ``PopularRecommender(groups=...)``. 1: one table
    for every user.
    """

    shares_state_across_users = True  # the item statistics pool every user it serves

    def __init__(self, inner: Recommender, num_items: int, device: Any, groups: int = 1) -> None:
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups: expected a positive integer, got {groups!r}")
        self.inner, self.name = inner, inner.name
        self.num_items, self.groups = num_items, groups
        self.backend = torch_backend(device)
        # impressions, clicks, engagement per item of each group's table in turn
        self.table = torch.zeros(3, groups * num_items, dtype=torch.int64, device=device)
        self._shown: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def place(self, shard: Shard | None) -> None:
        self.shard = shard
        self.inner.place(shard)

    def reset(self, mask: torch.Tensor | None = None) -> None:
        self.inner.reset(mask)  # the statistics are the population's, not a user's: kept

    def slate_propensity(self, num_candidates: int) -> float | None:
        return self.inner.slate_propensity(num_candidates)

    def export_module(self, keys: list[str]) -> torch.nn.Module:
        """The inner recommender's, taking the raw item statistics this wrapper logs as one more input."""
        module = self.inner.export_module(keys)
        module.item_stats = True
        return module

    def stats(self) -> torch.Tensor:
        """``[groups * num_items, 3]`` float32 impressions, clicks and summed engagement per item (of each
        group's table in turn)."""
        counts = self.table[:2].to(torch.float32)
        engagement = (self.table[2].to(torch.float64) / EXACT_SCALE).to(torch.float32)
        return torch.cat([counts, engagement[None]]).T

    def grouped(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` catalog ids as rows of the table of each user's group."""
        if self.groups == 1:
            return ids
        batch = ids.shape[0]
        total, offset = (batch, 0) if self.shard is None else (self.shard.total, self.shard.offset)
        if total % self.groups:
            raise ValueError(f"groups: {self.groups} groups need a batch that divides into them, got {total} users")
        group = (torch.arange(batch, device=ids.device) + offset) // (total // self.groups)
        return ids + (group * self.num_items)[:, None]

    def act(self, observation: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        ids = self.grouped(observation["candidate_ids"].to(torch.int64))  # [B, N] rows of the table
        candidates = with_item_stats(observation["candidates"], self.stats()[ids])  # as the export does
        slate = self.inner.act({**observation, "candidates": candidates}, info)
        self._shown = (ids, slate, info.get("active"))
        return slate

    def observe(self, reward: torch.Tensor, done: torch.Tensor, info: dict[str, Any]) -> None:

        if self._shown is None:
            raise RuntimeError("observe() before act()")
        ids, slate, active = self._shown
        rows = info.get("active", active)
        shown, clicked, engagement = logged_events(self.backend, ids, slate, info["chosen_candidate"], reward, rows)
        step = torch.zeros_like(self.table)
        step[0].index_add_(0, shown, torch.ones_like(shown))
        step[1].index_add_(0, clicked, torch.ones_like(clicked))
        add_exact(step[2], clicked, engagement)
        if self.shard is not None:
            self.shard.sum_(step)  # every process's users, added exactly
        self.table += step
        arrived = arrived_items(info, self.table.device, self.groups)
        if arrived is not None:  # a new item's log starts empty
            self.table[:, arrived] = 0
        self.inner.observe(reward, done, info)


def shift_interests(env: TaskBatchVectorEnv, rows: torch.Tensor, seed: int) -> dict[str, Any]:
    """Re-draws the interests of the users in ``rows`` (``[B]`` bool) as an abrupt shift does, and
    returns the ground-truth info of the next decision under the new interests."""
    model, state = env.model, dict(env.state)
    cluster, anchor = model._draw_users(model.backend.make_random(seed), env.num_envs, state["task"])
    state["cluster"] = torch.where(rows, cluster, state["cluster"])
    state["anchor"] = torch.where(rows[:, None], anchor, state["anchor"])
    state["interest"] = torch.where(rows[:, None], anchor, state["interest"])
    env._state = state
    return env._truth({})


def run_protocol(
    recommender: Recommender, env: TaskBatchVectorEnv, sessions: int, config: EvalConfig, seed: int,
    metrics: bool = True,
) -> dict[str, Any]:
    """One method on the env's users (reset with ``seed``): per-session returns, the per-step expected reward
    and regret around the shift (means over users still present) and, with ``metrics``, the sums per session
    of :class:`~metarec.agents.metrics.SessionMetrics`."""
    observation, info = env.reset(seed=seed)
    recommender.reset()
    users = env.num_envs
    session_return = torch.zeros(users, sessions, dtype=torch.float64, device=env.device)
    alive = torch.ones(users, dtype=torch.bool, device=env.device)
    expected = np.full(config.max_steps, np.nan)
    regret = np.full(config.max_steps, np.nan)
    ranked = SessionMetrics(env, sessions) if metrics else None  # ranking against the ground truth, clicks
    cold = ItemColdStart(env.model.num_items, env.device) if env.model.churn is not None else None
    for t in range(config.max_steps):
        if t == config.shift_at:
            info = {**info, **shift_interests(env, alive, batch_seed(seed, 1))}  # its own random stream
        session = env.state["session"].clone()
        info = {**info, "active": alive}
        slate = recommender.act(observation, info)
        utility = info.get("candidate_utilities") if ranked is not None else None
        offered, oracle = observation["candidate_ids"], info["oracle_slate"]
        observation, reward, terminated, truncated, info = env.step(slate)
        live = alive.clone()
        session_return[live, session[live]] += reward[live].double()
        if ranked is not None:
            ranked.add(utility, slate, reward, info, session, live)
        if cold is not None:
            cold.add(offered, slate, oracle, info, live)
        if bool(live.any()):
            expected[t] = float(info["expected_reward"][live].mean())
            regret[t] = float(info["regret"][live].mean())
        done = terminated | truncated
        recommender.observe(reward, done, {**info, "active": live})
        alive = live & ~done
        if not bool(alive.any()):
            break
    return {"session_return": session_return.mean(dim=0).cpu().numpy(), "expected": expected, "regret": regret,
            "metrics": None if ranked is None else ranked.sums.cpu().numpy(),
            "k": None if ranked is None else ranked.ranking.k,
            "cold_start": None if cold is None else cold.records_array(),
            "task_return": session_return.reshape(len(env.tasks), -1, sessions).mean(dim=1).cpu().numpy()}  # fmt: skip


Factory = Callable[[TaskBatchVectorEnv, int], Recommender]


def adaptation_curves(
    methods: dict[str, Factory],
    distribution: TaskDistribution,
    split: str,
    sessions: int,
    config: EvalConfig,
    seed: int,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
    item_stats: bool = False,
    meta_learner: str | None = None,
    metrics: bool = True,
    perturb: Callable[[list[Any]], list[Any]] | None = None,
) -> dict[str, Any]:
    """Runs the protocol for every method (plus ``random`` and ``oracle``, the normalisers) over
    ``config.seeds`` seeds; returns the ``meta-eval`` result (JSON-ready). The paired leads are those of
    ``meta_learner`` (named before evaluation), else of the best meta-learner of these runs. ``perturb``
    changes each seed's tasks before the users are drawn (see :mod:`metarec.meta.robustness`)."""
    if meta_learner is not None and meta_learner not in methods:
        raise ValueError(f"meta_learner: {meta_learner!r} is not among the methods evaluated ({', '.join(methods)})")
    everything: dict[str, Factory] = {
        "random": lambda env, s: make_recommender("random", env, s),
        "oracle": lambda env, s: make_recommender("oracle", env, s),
        **methods,
    }
    curves: dict[str, list[np.ndarray]] = {name: [] for name in everything}
    shifts: dict[str, list[dict[str, Any]]] = {name: [] for name in everything}
    regrets: dict[str, list[np.ndarray]] = {name: [] for name in everything}
    metric_sums: dict[str, list[np.ndarray]] = {name: [] for name in everything}
    cold: dict[str, list[np.ndarray]] = {name: [] for name in everything}
    task_returns: dict[str, list[np.ndarray]] = {name: [] for name in everything}  # [seeds][tasks, sessions]
    for k in range(config.seeds):
        eval_seed = seed + EVAL_SEED_OFFSET + k
        tasks = task_batch(distribution, split, config.tasks, seed, EVAL_SEED_OFFSET + k, sessions)
        tasks = tasks if perturb is None else perturb(tasks)
        env = TaskBatchVectorEnv(tasks, config.users_per_task, device=device, autoreset=False, item_stats=item_stats)
        for name, factory in everything.items():
            run = run_protocol(factory(env, eval_seed), env, sessions, config, eval_seed, metrics)
            curves[name].append(run["session_return"])
            shifts[name].append(shift_summary(run, config))
            regrets[name].append(cumulative_regret(run["regret"]))
            metric_sums[name].append(run["metrics"])
            cold[name].append(run["cold_start"])
            task_returns[name].append(run["task_return"])
            if progress is not None:
                progress(f"seed {k + 1}/{config.seeds} {name}: session 1 return {run['session_return'][0]:.3f}")
    low, high = np.stack(curves["random"]), np.stack(curves["oracle"])  # [seeds, sessions]
    result: dict[str, Any] = {"split": split, "sessions": list(range(1, sessions + 1)), "methods": {}}
    per_seed: dict[str, np.ndarray] = {}
    for name in everything:
        raw = np.stack(curves[name])
        normalised = per_seed[name] = (raw - low) / np.where(high - low > 0, high - low, np.nan)
        mean, ci = mean_interval(normalised)
        recover = [s["interactions_to_recover_90"] for s in shifts[name]]
        result["methods"][name] = {
            "normalised_return": mean,
            "ci95": ci,
            "raw_return": raw.mean(axis=0).tolist(),
            "per_seed": normalised.tolist(),  # [seeds][sessions], for statistics of one's own
            "regret_after": regret_table(np.stack(regrets[name])),
            "metrics": session_summary(np.sum(metric_sums[name], axis=0), run["k"]) if metrics else None,
            "item_cold_start": None if run["cold_start"] is None else summarise(np.concatenate(cold[name])),
            "populations": population_summary(task_returns[name], task_returns["random"], task_returns["oracle"]),
            "shift": {
                **{
                    key: float(np.mean([s[key] for s in shifts[name]]))
                    for key in ("pre_shift_level", "regret_before_shift", "regret_after_shift")
                },
                "dip": float(np.mean([s["dip"] for s in shifts[name] if s["dip"] is not None] or [np.nan])),
                "interactions_to_recover_90": recover,
                "recovered_within_10": int(sum(r is not None and r <= 10 for r in recover)),
            },
        }
    meta = [m for m in result["methods"] if m in META_LEARNERS]
    result["best_meta_method"] = (
        max(meta, key=lambda m: np.nanmean(result["methods"][m]["normalised_return"][:10])) if meta else None
    )
    result["meta_learner"] = meta_learner
    best = meta_learner or result["best_meta_method"]
    if best is not None:
        result["paired"] = {
            "method": best,
            "against": {
                other: dict(zip(("difference", "ci95"), mean_interval(per_seed[best] - per_seed[other]), strict=True))
                for other in (*BASELINES, *REFERENCES)
                if other in per_seed and other != best
            },
        }
    result["seeds"] = config.seeds
    return result
