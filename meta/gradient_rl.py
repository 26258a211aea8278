"""Gradient-based meta-RL on task batches: MAML, first-order MAML, Reptile, and the baselines that
adapt the same way (a policy pre-trained on the task mixture, and one from scratch).

Every method adapts the same way, at meta-training and at evaluation, to what ``gradient.adapt`` names:

* ``population``: one policy per task (population). After a window of ``rollout_steps`` steps of its
  users, one policy-gradient step per task on that window (:func:`policy_gradient_loss`: REINFORCE on
  the discounted reward-to-go within the window, less the mean over the task's users at that step,
  scaled by their spread). What one user teaches the policy changes what the others see.
* ``user``: one policy per user, each from θ. After a window of ``rollout_steps`` of that user's own
  interactions, one policy-gradient step on that window alone (the reward-to-go of the user's rewards
  less their mean over the window, scaled by its spread). Nothing passes between users, so they stay
  independent samples.

The methods differ in where the initial parameters θ come from:

* ``maml``: θ such that the policy *after* an inner step does well (second-order meta-gradient
  through the inner step, with :class:`~metarec.meta.gradient.GradientMetaLearner`);
* ``fomaml``: the same with the first-order approximation;
* ``reptile``: θ moved toward the parameters each task reaches after ``inner_steps`` steps;
* ``finetune``: θ trained by plain policy gradient on the task mixture (no inner step at training),
  then adapted like the others;
* ``scratch``: freshly initialised θ, adapted like the others.

The inner loss treats the window's data as fixed: the dependence of the query rollout's
distribution on θ (the term DiCE and ProMP add) is left out, as in most MAML-RL implementations.
The policy is :func:`~metarec.meta.policy.feedforward_policy` (vmap-compatible); slates are sampled
outside ``vmap`` with the trainer's generator.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from metarec.agents.base import Recommender
from metarec.agents.nn.distributions import PlackettLuce
from metarec.config import FrozenConfig
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.gradient import GradientMetaLearner, TaskParams
from metarec.meta.policy import feedforward_policy
from metarec.meta.tasks import TaskDistribution, TaskShare
from metarec.parallel import Shard

GradientMethod = Literal["maml", "fomaml", "reptile", "finetune", "scratch"]
AdaptTo = Literal["population", "user"]


class GradientConfig(FrozenConfig):
    """Hyper-parameters of :class:`GradientMetaTrainer` and of the adaptation every gradient method
    performs at evaluation."""

    tasks_per_batch: int = Field(8, ge=1, description="Tasks per meta-batch.")
    users_per_task: int = Field(64, ge=1, description="Users of each task stepping at once.")
    rollout_steps: int = Field(16, ge=1, description="Steps per adaptation window.")
    meta_steps: int = Field(100, ge=0, description="Meta-updates of a full run.")
    inner_steps: int = Field(1, ge=1, description="Inner steps per meta-update (Reptile; MAML uses 1).")
    inner_lr: float = Field(0.3, gt=0, description="Step size of the inner policy-gradient step.")
    outer_lr: float = Field(1e-3, gt=0, description="Adam step size of the meta-update.")
    gamma: float = Field(0.9, ge=0, le=1, description="Discount of the reward-to-go inside a window.")
    hidden: int = Field(64, ge=1, description="Width of the policy.")
    adapt: AdaptTo = Field(
        "population",
        description="What an inner step adapts, at meta-training, evaluation and serving alike: 'population', "
        "one policy per task stepped on the window of all its users; 'user', one policy per user stepped on "
        "that user's own window only.",
    )

    def groups(self, tasks: int, users_per_task: int) -> tuple[int, int]:
        """``(groups, members)``: how the ``tasks x users_per_task`` users split into the groups that each
        adapt one set of parameters (a task's users, or every user on their own)."""
        return (tasks * users_per_task, 1) if self.adapt == "user" else (tasks, users_per_task)


def window_advantages(
    rewards: torch.Tensor, active: torch.Tensor, gamma: float, per_user: bool = False
) -> torch.Tensor:
    """``[T, L, U]`` advantages of a window of rewards ``[T, L, U]``: the discounted reward-to-go
    inside the window, less its mean over the task's active users at that step, over their std.

    With ``per_user`` every user is on their own (``U`` is 1 in the trainers): the baseline is what the
    user's own mean reward over their active steps would give, so the advantage is the reward-to-go of
    the rewards less that mean, over its std across the user's window; no other user enters it."""
    if per_user:
        weight = active.float()
        mean = (rewards * weight).sum(dim=1, keepdim=True) / weight.sum(dim=1, keepdim=True).clamp(min=1.0)
        rewards = (rewards - mean) * weight
    togo = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = active[:, t] * (rewards[:, t] + gamma * running)  # nothing from after a user left
        togo[:, t] = running
    weight = active.float()
    if per_user:
        count = weight.sum(dim=1, keepdim=True).clamp(min=1.0)
        var = ((togo * weight) ** 2).sum(dim=1, keepdim=True) / count
        return togo / (var.sqrt() + 1e-6) * weight
    count = weight.sum(dim=2, keepdim=True).clamp(min=1.0)
    mean = (togo * weight).sum(dim=2, keepdim=True) / count
    var = (((togo - mean) * weight) ** 2).sum(dim=(1, 2), keepdim=True) / count.sum(dim=1, keepdim=True)
    return (togo - mean) / (var.sqrt() + 1e-6) * weight


def policy_gradient_loss(policy: nn.Module, slate_size: int):
    """The per-task inner loss ``loss(params, batch)`` for :meth:`GradientMetaLearner.adapt`. The
    batch holds one task's window flattened over steps and users: observations, ``slates``,
    ``advantages`` and ``active`` (1 where the step counts)."""
    from torch.func import functional_call

    def loss(params: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        logits, _ = functional_call(policy, params, (batch["observation"],))
        log_prob = PlackettLuce(logits, slate_size).log_prob(batch["slates"])
        weight = batch["active"]
        return -(log_prob * batch["advantages"] * weight).sum() / weight.sum().clamp(min=1.0)

    return loss


class TaskWindow:
    """Records a window of steps of a ``T x U`` task batch and turns it into an inner-loss batch; with
    ``per_user`` each of the ``T`` groups is one user (``U`` = 1) and is its own baseline."""

    def __init__(self, num_tasks: int, users_per_task: int, per_user: bool = False) -> None:
        self.num_tasks, self.users, self.per_user = num_tasks, users_per_task, per_user
        self.clear()

    def clear(self) -> None:
        self.observations: list[dict[str, torch.Tensor]] = []
        self.slates: list[torch.Tensor] = []
        self.rewards: list[torch.Tensor] = []
        self.active: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.rewards)

    def forget(self, rows: torch.Tensor) -> None:
        """Leaves the steps recorded so far of the users in ``rows`` (``[B]`` bool) out of the batch: the
        user in such a row left, and a new one takes it."""
        keep = (~rows).float()
        self.active = [active * keep for active in self.active]

    def add(self, observation: dict[str, torch.Tensor], slate: torch.Tensor, reward: torch.Tensor,
            active: torch.Tensor) -> None:  # fmt: skip
        self.observations.append({k: v for k, v in observation.items() if k != "candidate_ids"})
        self.slates.append(slate)
        self.rewards.append(reward.float())
        self.active.append(active.float())

    def batch(self, gamma: float) -> dict[str, Any]:
        """Per-task leaves ``[T, L * U, ...]``."""
        t, u = self.num_tasks, self.users

        def by_task(values: list[torch.Tensor]) -> torch.Tensor:  # [L, B, ...] -> [T, L, U, ...]
            stacked = torch.stack(values)
            return stacked.reshape(stacked.shape[0], t, u, *stacked.shape[2:]).transpose(0, 1)

        rewards, active = by_task(self.rewards), by_task(self.active)
        advantages = window_advantages(rewards, active, gamma, self.per_user)
        flat = lambda x: x.reshape(t, -1, *x.shape[3:])  # noqa: E731
        observation = {k: flat(by_task([o[k] for o in self.observations])) for k in self.observations[0]}
        return {
            "observation": observation,
            "slates": flat(by_task(self.slates)),
            "advantages": flat(advantages),
            "active": flat(active),
        }


class TaskPolicy:
    """Acts for a ``T x U`` batch with per-task parameters (``vmap`` over tasks)."""

    def __init__(self, learner: GradientMetaLearner, num_tasks: int, users_per_task: int, slate_size: int) -> None:
        from torch.func import vmap

        self.forward = vmap(learner.functional())
        self.num_tasks, self.users, self.slate_size = num_tasks, users_per_task, slate_size

    def logits(self, params: TaskParams, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        split = {k: v.reshape(self.num_tasks, self.users, *v.shape[1:]) for k, v in observation.items()
                 if k != "candidate_ids"}  # fmt: skip
        with torch.no_grad():
            logits, _ = self.forward(params.params, split)
        return logits.reshape(self.num_tasks * self.users, -1)

    def sample(
        self,
        params: TaskParams,
        observation: dict[str, torch.Tensor],
        generator: torch.Generator,
        shard: tuple[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Plackett–Luce slates; with ``shard`` ``(full_batch, rows)`` the Gumbel noise is drawn for the
        full batch and these rows taken (each user's draw as in the unsharded batch)."""
        return PlackettLuce(self.logits(params, observation), self.slate_size).sample(generator, rows_of=shard)


class GradientMetaTrainer:
    """Meta-trains θ for ``method`` on tasks of ``split`` (``scratch`` trains nothing)."""

    def __init__(
        self,
        method: GradientMethod,
        distribution: TaskDistribution,
        split: str,
        config: GradientConfig,
        sessions: int,
        seed: int,
        device: str | torch.device = "cpu",
        item_stats: bool = False,
    ) -> None:
        if method not in ("maml", "fomaml", "reptile", "finetune", "scratch"):
            raise ValueError(f"method: expected maml, fomaml, reptile, finetune or scratch, got {method!r}")
        self.name, self.method = method, method
        self.distribution, self.split, self.config = distribution, split, config
        self.sessions, self.seed = sessions, seed
        c = config
        # Data-parallel over tasks when torch.distributed is initialised: this process steps its share
        # of every meta-batch's tasks, and the meta-gradients are averaged (GradientMetaLearner).
        self.share = TaskShare.of_this_process(c.tasks_per_batch, c.users_per_task, "gradient.tasks_per_batch")
        self.rank, self.world, self.local_tasks = self.share.rank, self.share.world, self.share.local_tasks
        self.env = TaskBatchVectorEnv(
            self._tasks(0), c.users_per_task, device=device, ground_truth=False, item_stats=item_stats,
            shard=self.share.env_shard(), autoreset=False,  # a finished user stays out of the window
        )  # fmt: skip
        self.device = self.env.device
        self.slate_size = self.env.model.slate_size
        torch.manual_seed(seed)  # initial weights only
        self.policy = feedforward_policy(self.env.single_observation_space, self.slate_size, c.hidden).to(self.device)
        learner_method = {"maml": "maml", "fomaml": "fomaml", "reptile": "reptile"}.get(method, "fomaml")
        self.learner = GradientMetaLearner(self.policy, learner_method, c.inner_lr, c.outer_lr)
        self.loss = policy_gradient_loss(self.policy, self.slate_size)
        # the groups that each adapt their own parameters: this process's tasks, or each of their users
        self.groups, self.members = c.groups(self.local_tasks, c.users_per_task)
        self.acting = TaskPolicy(self.learner, self.groups, self.members, self.slate_size)
        self.generator = torch.Generator(device=self.device).manual_seed(seed + 7919)
        self.shard = self.share.rows_of(self.device)
        self.update = 0
        self.global_step = 0

    def _tasks(self, index: int) -> list[Any]:
        """This process's tasks of meta-batch ``index``."""
        return self.share.tasks(self.distribution, self.split, self.seed, index, self.sessions)

    @property
    def done(self) -> bool:
        return self.method == "scratch" or self.update >= self.config.meta_steps

    def rollout(self, params: TaskParams) -> dict[str, Any]:
        """One window of every user of the meta-batch under per-task ``params``."""
        c = self.config
        window = TaskWindow(self.groups, self.members, per_user=c.adapt == "user")
        for _ in range(c.rollout_steps):
            slate = self.acting.sample(params, self.observation, self.generator, self.shard)
            observation, reward, terminated, truncated, _ = self.env.step(slate)
            window.add(self.observation, slate, reward, self.alive)
            self.alive = self.alive & ~(terminated | truncated)  # a user who left stays out of later windows
            self.observation = observation
        self.global_step += c.rollout_steps * self.env.num_envs * self.world
        return window.batch(c.gamma)

    def step(self) -> dict[str, float]:
        """One meta-update on a fresh meta-batch of tasks (new users, from their first session)."""
        from torch.func import vmap

        c = self.config
        self.env.set_tasks(self._tasks(self.update))
        self.observation, _ = self.env.reset(seed=self.seed * 1_000_003 + self.update)
        self.alive = torch.ones(self.env.num_envs, dtype=torch.bool, device=self.device)
        params = self.learner.clone(self.groups)
        support = self.rollout(params)
        if self.method == "finetune":  # plain multi-task policy gradient at θ
            loss = vmap(self.loss)(params.params, support).mean()
            stats = self.learner.meta_step(params, loss)
        elif self.method == "reptile":
            adapted = self.learner.adapt(params, self.loss, support)
            for _ in range(c.inner_steps - 1):
                adapted = self.learner.adapt(adapted, self.loss, self.rollout(adapted))
            stats = self.learner.meta_step(adapted)
        else:
            adapted = self.learner.adapt(params, self.loss, support)
            query = self.rollout(adapted)
            stats = self.learner.meta_step(adapted, vmap(self.loss)(adapted.params, query).mean())
        self.update += 1
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"learner": self.learner.state_dict(), "generator": self.generator.get_state(),
                "update": self.update, "global_step": self.global_step}  # fmt: skip

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.learner.load_state_dict(saved["learner"])
        self.generator.set_state(saved["generator"])
        self.update, self.global_step = int(saved["update"]), int(saved["global_step"])


class AdaptingRecommender(Recommender):
    """A gradient method at evaluation and when serving, adapting as ``config.adapt`` says (see the module
    docstring). ``population``: per-task parameters from θ, one inner policy-gradient step per task after
    every window of ``rollout_steps`` steps, on that window's data of the users marked in ``info["active"]``
    (when given); a task's parameters are its users' shared state. ``user``: per-user parameters from θ,
    each stepped on that user's own steps of the window only; a row the env gives a new user starts again from
    θ, and is stepped at the window's end on the steps it had (fewer than ``rollout_steps`` when it arrived
    during the window)."""

    def __init__(self, name: str, policy: nn.Module, config: GradientConfig, num_tasks: int, users_per_task: int,
                 slate_size: int, generator: torch.Generator) -> None:  # fmt: skip
        self.name = name
        self.config = config
        self.per_user = config.adapt == "user"
        # per task, every user of a task moves the parameters all of them are served by; per user, nobody else's
        self.shares_state_across_users = not self.per_user
        groups, members = config.groups(num_tasks, users_per_task)
        self.learner = GradientMetaLearner(policy, "reptile", config.inner_lr, config.outer_lr)  # no graph kept
        self.loss = policy_gradient_loss(policy, slate_size)
        self.acting = TaskPolicy(self.learner, groups, members, slate_size)
        self.window = TaskWindow(groups, members, per_user=self.per_user)
        self.generator = generator
        self.params = self.learner.clone(groups)
        self.initial = self.params if self.per_user else None  # θ per user, for the rows new users take
        self.adaptations = 0

    def place(self, shard: Shard | None) -> None:
        if shard is not None and not self.per_user:  # its inner step would see only this process's users
            raise ValueError(f"agent: {self.name} adapts one policy to all its users' data, so it serves in one "
                             "process; run it without --nproc, or meta-train it with gradient.adapt: user")  # fmt: skip
        super().place(shard)

    def export_module(self, keys: list[str]) -> torch.nn.Module:
        """θ, the weights every user starts from, as a scorer of its most probable slates."""
        from metarec.agents.export import SlateScorer

        policy = self.learner.module
        return SlateScorer(policy, keys, policy.slate_size)

    def act(self, observation: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        self._observation = observation
        rows_of = self.draws(self.generator, observation["candidates"].shape[0]).rows_of()  # the whole batch's draws
        self._slate = self.acting.sample(self.params, observation, self.generator, rows_of)
        return self._slate

    def observe(self, reward: torch.Tensor, done: torch.Tensor, info: dict[str, Any]) -> None:
        active = info.get("active")
        active = torch.ones_like(done) if active is None else active
        self.window.add(self._observation, self._slate, reward, active)
        if len(self.window) == self.config.rollout_steps:
            self.params = self.learner.adapt(self.params, self.loss, self.window.batch(self.config.gamma))
            self.window.clear()
            self.adaptations += 1

    def reset(self, mask: torch.Tensor | None = None) -> None:
        """Per user, a new user in a row starts from θ and nothing its predecessor did is learned from;
        per task, the parameters are the population's and stay."""
        if self.initial is None:
            return
        if mask is None:
            self.params = self.initial
            self.window.clear()
            return
        if not bool(mask.any()):
            return
        self.window.forget(mask)
        self.params = replace(self.params, params={
            name: torch.where(mask.reshape(-1, *[1] * (p.dim() - 1)), self.initial.params[name], p)
            for name, p in self.params.params.items()
        })  # fmt: skip
