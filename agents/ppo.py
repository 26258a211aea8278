"""Batched PPO on the native vector environment: rollouts, GAE and updates all as torch tensors.

The whole batch of users steps at once, on the device the environment and policy share, so training
runs at simulator speed. The algorithm is PPO with a clipped objective (Schulman et al., 2017):
rollouts of ``rollout_steps`` steps from ``num_envs`` users, generalised advantage estimation,
``update_epochs`` passes over shuffled minibatches, optional value clipping and an optional KL stop.
Slates come from a Plackett–Luce policy (:class:`~metarec.agents.nn.networks.SlatePolicy`).

Truncated episodes (a time limit) are bootstrapped with the value of their last observation;
terminated ones are not. Everything random (environment, slate sampling, minibatch order) comes from
explicit generators saved in :meth:`BatchedPPO.state_dict`, so a run resumed from a checkpoint
continues exactly as if it had never stopped (on CPU; GPU kernels may not be bitwise deterministic).

In a ``torch.distributed`` group (``metarec train --nproc N``) each process steps a contiguous block
of the ``num_envs`` users through a sharded env (every random draw made for all users, newcomers
drawn for every row each step), so each user's trajectory is the one it has in one process.
Minibatches are drawn over the whole rollout; each process computes its own samples' share of the
minibatch's loss, and the loss terms, advantage statistics, reward scale, KL and gradients are summed
over the processes: the parameters follow the one-process run (with ``keyed_resets``) up to
floating-point summation order. A checkpoint holds every process's users; resume with the same N.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field

from metarec.agents.base import Recommender, active_rows, fill_slates, slate_size_of
from metarec.agents.nn.networks import SlatePolicy
from metarec.config import FrozenConfig
from metarec.parallel import all_reduce_


class PPOConfig(FrozenConfig):
    """Hyper-parameters of :class:`BatchedPPO` (CleanRL's names where they exist)."""

    num_envs: int = Field(1024, ge=1, description="Users stepping in parallel.")
    rollout_steps: int = Field(32, ge=1, description="Steps per user in each rollout.")
    learning_rate: float = Field(3e-4, gt=0, description="Adam step size.")
    anneal_lr: bool = Field(True, description="Decay the learning rate linearly to 0 over training.")
    gamma: float = Field(0.99, ge=0, le=1, description="Discount factor.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    num_minibatches: int = Field(4, ge=1, description="Minibatches per epoch.")
    update_epochs: int = Field(4, ge=1, description="Passes over each rollout.")
    clip_coef: float = Field(0.2, gt=0, description="PPO ratio clip.")
    clip_value: bool = Field(False, description="Clip the value loss like the policy ratio.")
    ent_coef: float = Field(0.01, ge=0, description="Entropy bonus weight.")
    vf_coef: float = Field(0.5, ge=0, description="Value loss weight.")
    max_grad_norm: float = Field(0.5, gt=0, description="Global gradient norm clip.")
    target_kl: float | None = Field(None, gt=0, description="Stop an update's epochs once approx KL exceeds this.")
    normalize_advantages: bool = Field(True, description="Standardise advantages per minibatch.")
    normalize_rewards: bool = Field(
        True, description="Divide rewards by a running std of the discounted return (as Gymnasium's NormalizeReward)."
    )
    hidden: int = Field(64, ge=1, description="Width of the policy/value network.")
    history_encoder: Literal["gru", "transformer", "mlp"] = Field("gru", description="Encoder of `history`.")


class RunningMeanStd:
    """Running mean and variance of a stream of batches (Chan et al.'s parallel update), float64."""

    def __init__(self, device: torch.device) -> None:
        self.mean = torch.zeros((), dtype=torch.float64, device=device)
        self.var = torch.ones((), dtype=torch.float64, device=device)
        self.count = torch.full((), 1e-4, dtype=torch.float64, device=device)

    def update(self, batch: torch.Tensor, reduce: Callable[[list[torch.Tensor]], None] | None = None) -> None:
        """Adds ``batch``; ``reduce`` (e.g. a sum over the processes of a run, in place) makes it the
        batch of every process's values together."""
        batch = batch.to(torch.float64)
        n = batch.numel()
        if reduce is None:
            mean, var = batch.mean(), batch.var(unbiased=False)
        else:
            moments = torch.stack([torch.tensor(float(n), dtype=torch.float64, device=batch.device),
                                   batch.sum(), (batch**2).sum()])  # fmt: skip
            reduce([moments])
            n = int(moments[0])
            mean = moments[1] / n
            var = (moments[2] / n - mean**2).clamp_min(0)
        delta = mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone()}

    def load_state_dict(self, saved: dict[str, torch.Tensor]) -> None:
        self.mean, self.var, self.count = (saved[k].to(self.mean.device) for k in ("mean", "var", "count"))


def generalized_advantages(
    rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """GAE(gamma, lambda) advantages ``[T, B]`` of a rollout: ``dones[t]`` (float) marks an episode
    that ended with step ``t``; ``next_value`` ``[B]`` is V of the observation after the last step."""
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        following = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * following * not_done - values[t]
        last = delta + gamma * lam * not_done * last
        advantages[t] = last
    return advantages


def standardise(
    values: torch.Tensor, count: int, reduce: Callable[[list[torch.Tensor]], None] = all_reduce_
) -> torch.Tensor:
    """``values`` less their mean, over their standard deviation (float32), where the minibatch of
    ``count`` samples may be spread over processes: ``reduce`` sums this process's moments with the
    others' (in float64), so every process standardises by the same minibatch statistics."""
    values = values.double()
    moments = torch.stack([values.sum(), (values**2).sum()])
    reduce([moments])
    mean = moments[0] / count
    std = ((moments[1] - count * mean**2).clamp_min(0) / (count - 1)).sqrt()
    return ((values - mean) / (std + 1e-8)).float()


class BatchedPPO:
    """PPO over a :class:`~metarec.envs.adapters.UserSimVectorEnv` (autoreset on).

    Args:
        env: the vector environment (its device is the training device).
        config: hyper-parameters.
        seed: seeds the policy's initial weights, slate sampling and minibatch order; the
            environment is reset with it too.
        total_steps: environment steps (over all users) the learning-rate schedule spans.
    """

    def __init__(self, env: Any, config: PPOConfig, seed: int, total_steps: int) -> None:
        if not getattr(env, "autoreset", False):
            raise ValueError("env: BatchedPPO needs a vector environment with autoreset=True")
        shard = getattr(env, "shard", None)
        users = env.num_envs if shard is None else shard[0]
        if config.num_envs != users:
            raise ValueError(f"num_envs: config says {config.num_envs}, the environment has {users}")
        self.rank, self.world = _process_share()
        if (shard is None) != (self.world == 1):
            raise ValueError(f"env: {self.world} processes need an env sharded among them (shard=...), got {shard}")
        self.offset = 0 if shard is None else int(shard[1][0])
        self.rows_of = None if shard is None else (users, torch.as_tensor(list(shard[1]), device=env.device))
        batch = config.num_envs * config.rollout_steps
        if batch % config.num_minibatches:
            raise ValueError(
                f"num_minibatches: must divide num_envs x rollout_steps = {batch}, got {config.num_minibatches}"
            )
        self.env = env
        self.config = config
        self.device = env.device
        self.single_item = bool(getattr(env, "single_item", False))
        self.total_steps = total_steps
        torch.manual_seed(seed)  # initial weights only; everything after uses the generators below
        slate_size = slate_size_of(env) or 1
        self.policy = SlatePolicy(env.single_observation_space, slate_size, config.hidden, config.history_encoder).to(
            self.device
        )
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.learning_rate, eps=1e-5)
        self.generator = torch.Generator(device=self.device).manual_seed(seed + 7919)
        self.global_step = 0
        self.update = 0
        self.observation, _ = env.reset(seed=seed)
        self.episode_return = torch.zeros(env.num_envs, dtype=torch.float64, device=self.device)
        self.episode_length = torch.zeros(env.num_envs, dtype=torch.int64, device=self.device)
        # Discounted return so far of each user's episode, whose spread scales the rewards.
        self.discounted_return = torch.zeros(env.num_envs, dtype=torch.float64, device=self.device)
        self.return_stats = RunningMeanStd(self.device)

    # ------------------------------------------------------------------ rollouts and updates
    def _act(self, observation: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, value = self.policy(observation)
        dist = self.policy.distribution(logits)
        slate = dist.sample(self.generator, rows_of=self.rows_of)
        return slate, dist.log_prob(slate), value

    def collect(self) -> dict[str, Any]:
        """One rollout of ``rollout_steps`` steps from every user; returns tensors ``[T, B, ...]``."""
        c, env = self.config, self.env
        steps, users = c.rollout_steps, env.num_envs
        zeros = lambda dtype=torch.float32: torch.zeros((steps, users), dtype=dtype, device=self.device)  # noqa: E731
        observations = {key: torch.empty((steps, *v.shape), dtype=v.dtype, device=self.device)
                        for key, v in self.observation.items()}  # fmt: skip
        slate_size = self.policy.slate_size
        slates = torch.empty((steps, users, slate_size), dtype=torch.int64, device=self.device)
        log_probs, values, rewards, dones = zeros(), zeros(), zeros(), zeros()
        # Return and length of each episode that ended at (t, b); read where dones[t, b] is 1. Kept on the
        # device, like the click and engagement sums, so a step waits for the device only where it must.
        ended_returns, ended_lengths = zeros(torch.float64), zeros(torch.int64)
        clicks = torch.zeros((), dtype=torch.float64, device=self.device)
        engagement = torch.zeros((), dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for t in range(steps):
                for key, value in self.observation.items():
                    observations[key][t] = value
                slate, log_prob, value = self._act(self.observation)
                action = slate[:, 0] if self.single_item else slate
                observation, reward, terminated, truncated, info = env.step(action)
                reward = reward.to(torch.float32)
                self.episode_return += reward
                self.episode_length += 1
                if c.normalize_rewards:
                    self.discounted_return = self.discounted_return * c.gamma + reward
                    self.return_stats.update(self.discounted_return, reduce=self._sum)
                    learn_reward = reward / torch.sqrt(self.return_stats.var + 1e-8).to(torch.float32)
                else:
                    learn_reward = reward
                # A time limit is not the end of the user's story: bootstrap with V(last obs).
                index = torch.nonzero(truncated & ~terminated)[:, 0]
                if len(index):
                    final = {key: v[index] for key, v in info["final_obs"].items()}
                    _, final_value = self.policy(final)
                    learn_reward = learn_reward.index_add(0, index, c.gamma * final_value)
                done = terminated | truncated
                ended_returns[t], ended_lengths[t] = self.episode_return, self.episode_length
                self.episode_return.masked_fill_(done, 0)
                self.episode_length.masked_fill_(done, 0)
                self.discounted_return.masked_fill_(done, 0)
                slates[t], log_probs[t], values[t] = slate, log_prob, value
                rewards[t], dones[t] = learn_reward, done.to(torch.float32)
                clicks += info["clicked"].float().mean().double()
                engagement += reward.mean().double()
                self.observation = observation
            _, next_value = self.policy(self.observation)
        advantages = generalized_advantages(rewards, values, dones, next_value, c.gamma, c.gae_lambda)
        self.global_step += steps * c.num_envs
        ended = dones.bool()
        if self.world > 1:  # means over every process's users
            means = torch.stack([clicks, engagement]) / self.world
            self._sum([means])
            clicks, engagement = means[0], means[1]
        return {
            "observations": observations,
            "slates": slates,
            "log_probs": log_probs,
            "values": values,
            "advantages": advantages,
            "returns": advantages + values,
            "episode_returns": ended_returns[ended],
            "episode_lengths": ended_lengths[ended],
            "ctr": float(clicks) / steps,
            "engagement": float(engagement) / steps,
        }

    def learn(self, rollout: dict[str, Any]) -> dict[str, float]:
        """PPO epochs over one rollout; returns the losses of the last minibatch and the diagnostics
        of the update (clip fraction over all minibatches, explained variance of the rollout)."""
        c = self.config
        if c.anneal_lr:
            # The schedule's position at the start of this rollout (collect has already counted it).
            done_before = self.global_step - c.num_envs * c.rollout_steps
            frac = max(0.0, 1.0 - done_before / max(self.total_steps, 1))
            for group in self.optimizer.param_groups:
                group["lr"] = frac * c.learning_rate
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
        observations = {key: flat(v) for key, v in rollout["observations"].items()}
        slates, old_log_probs = flat(rollout["slates"]), flat(rollout["log_probs"])
        old_values, advantages, returns = flat(rollout["values"]), flat(rollout["advantages"]), flat(rollout["returns"])
        # NaN guard: what the simulator handed over, before any weight changes (every process decides
        # together, so none is left waiting in a collective)
        bad = torch.stack([~torch.isfinite(t).all() for t in (advantages, returns, old_values)]).to(torch.float64)
        self._sum([bad])
        if bool(bad.any()):
            self._check_finite("the rollout's", advantages=advantages, returns=returns, values=old_values)
            raise FloatingPointError(self._non_finite_message("another process's rollout"))
        steps, local = rollout["values"].shape
        size = steps * c.num_envs  # samples of the whole rollout, step-major over every process's users
        minibatch = size // c.num_minibatches
        parameters = list(self.policy.parameters())
        for parameter in parameters:  # every process sums every gradient, also one with no samples in a minibatch
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        clipfracs: list[torch.Tensor] = []
        for _epoch in range(c.update_epochs):
            order = torch.randperm(size, generator=self.generator, device=self.device)
            approx_kl = torch.zeros((), device=self.device)
            for start in range(0, size, minibatch):
                chosen = order[start : start + minibatch]
                index = self._local_samples(chosen, local)
                count = len(chosen)
                adv = advantages[index]
                if c.normalize_advantages and count > 1:
                    adv = standardise(adv, count, self._sum)
                # this process's share of the minibatch's means: sums over its samples / the minibatch's count
                terms = torch.zeros(5, device=self.device)  # policy, value, entropy, approx KL, clipped
                if len(index):
                    logits, value = self.policy({key: v[index] for key, v in observations.items()})
                    dist = self.policy.distribution(logits)
                    log_prob = dist.log_prob(slates[index])
                    log_ratio = log_prob - old_log_probs[index]
                    ratio = log_ratio.exp()
                    clipped = ratio.clamp(1 - c.clip_coef, 1 + c.clip_coef)
                    if c.clip_value:
                        value_clipped = old_values[index] + (value - old_values[index]).clamp(-c.clip_coef, c.clip_coef)
                        value_error = torch.max((value - returns[index]) ** 2, (value_clipped - returns[index]) ** 2)
                    else:
                        value_error = (value - returns[index]) ** 2
                    with torch.no_grad():
                        kl = ((ratio - 1) - log_ratio).sum()
                        clipped_count = ((ratio - 1).abs() > c.clip_coef).float().sum()
                    terms = torch.stack([
                        torch.max(-adv * ratio, -adv * clipped).sum(), 0.5 * value_error.sum(),
                        dist.entropy(slates[index]).sum(), kl, clipped_count,
                    ]) / count  # fmt: skip
                loss = terms[0] - c.ent_coef * terms[2] + c.vf_coef * terms[1]
                self.optimizer.zero_grad(set_to_none=False)
                if loss.requires_grad:
                    loss.backward()
                reported = terms.detach().clone()
                self._sum([*(p.grad for p in parameters), reported])
                if not bool(torch.isfinite(reported[:3]).all()):
                    raise FloatingPointError(self._non_finite_message("a minibatch's loss"))
                approx_kl = reported[3]
                clipfracs.append(reported[4])
                torch.nn.utils.clip_grad_norm_(parameters, c.max_grad_norm)
                self.optimizer.step()
            if c.target_kl is not None and float(approx_kl) > c.target_kl:
                break
        # explained variance of the rollout's value estimates (over every process's users)
        moments = torch.stack([returns.double().sum(), (returns.double() ** 2).sum(),
                               (returns - old_values).double().sum(), ((returns - old_values).double() ** 2).sum()])
        self._sum([moments])
        variance = float(moments[1] / size - (moments[0] / size) ** 2)
        residual = float(moments[3] / size - (moments[2] / size) ** 2)
        explained = float("nan") if variance <= 0 else 1 - residual / variance
        stats = {
            "policy_loss": float(reported[0]),
            "value_loss": float(reported[1]),
            "entropy": float(reported[2]),
            "approx_kl": float(approx_kl),
            "clipfrac": float(torch.stack(clipfracs).mean()),
            "explained_variance": explained,
            "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
        }
        self.update += 1
        return stats

    def _local_samples(self, chosen: torch.Tensor, local: int) -> torch.Tensor:
        """Of the rollout's samples ``chosen`` (indices ``t * num_envs + user`` over every process's
        users), this process's, as indices into its own flattened rollout (``t * local + row``)."""
        if self.world == 1:
            return chosen
        t, user = chosen // self.config.num_envs, chosen % self.config.num_envs
        mine = (user >= self.offset) & (user < self.offset + local)
        return t[mine] * local + (user[mine] - self.offset)

    def _sum(self, tensors: list[torch.Tensor]) -> None:
        """Sums ``tensors`` in place over the processes of the run (nothing in one process)."""
        if self.world > 1:
            all_reduce_(tensors)

    def _non_finite_message(self, what: str) -> str:
        return (
            f"ppo: {what} is NaN or infinite at update {self.update + 1} (env step {self.global_step}); "
            "the weights may be damaged: resume from the last checkpoint, written before this update"
        )

    def _check_finite(self, where: str, **tensors: torch.Tensor) -> None:
        """Raises FloatingPointError naming the first of ``tensors`` holding NaN or inf."""
        for name, tensor in tensors.items():
            if not bool(torch.isfinite(tensor).all()):
                raise FloatingPointError(self._non_finite_message(f"{where} {name}"))

    def train(
        self,
        total_steps: int,
        on_update: Callable[[dict[str, Any], dict[str, float], float], bool | None] | None = None,
    ) -> None:
        """Alternates rollouts and updates until ``global_step >= total_steps``.

        ``on_update(rollout, stats, steps_per_second)`` runs after each update (logging,
        checkpoints, evaluation); returning True stops training early.
        """
        while self.global_step < total_steps:
            start = time.perf_counter()
            rollout = self.collect()
            stats = self.learn(rollout)
            rate = self.config.num_envs * self.config.rollout_steps / (time.perf_counter() - start)
            if on_update is not None and on_update(rollout, stats, rate):
                break

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly: weights, optimizer, generators,
        counters, and every process's users with their open episodes' running sums (``processes``,
        one entry per process in rank order)."""
        users = {
            "env": self.env.get_checkpoint(),
            "episode_return": self.episode_return.clone(),
            "episode_length": self.episode_length.clone(),
            "discounted_return": self.discounted_return.clone(),
        }
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "global_step": self.global_step,
            "update": self.update,
            "processes": gather_from_processes(users, self.world),
            "return_stats": self.return_stats.state_dict(),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        users = this_process_users(saved, self.rank, self.world)
        self.policy.load_state_dict(saved["policy"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"])
        self.global_step = int(saved["global_step"])
        self.update = int(saved["update"])
        self.observation, _ = self.env.load_checkpoint(users["env"])
        self.episode_return = users["episode_return"].to(self.device)
        self.episode_length = users["episode_length"].to(self.device)
        self.discounted_return = users["discounted_return"].to(self.device)
        self.return_stats.load_state_dict(saved["return_stats"])


    def recommender(self, deterministic: bool = True) -> PolicyRecommender:
        return PolicyRecommender(self.policy, single_item=self.single_item, deterministic=deterministic)


def _process_share() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def this_process_users(saved: dict[str, Any], rank: int, world: int) -> Any:
    """This process's entry of a checkpoint's ``processes`` (see :func:`gather_from_processes`), after
    checking that the checkpoint was written by as many processes as this run has."""
    if "processes" not in saved:
        raise ValueError("--resume: this checkpoint was written by an older metarec (no 'processes'); start a new run")
    written = len(saved["processes"])
    if written != world:
        raise ValueError(
            f"--resume: the checkpoint holds {written} processes' users; resume with --nproc {written} "
            f"(this run has {world})"
        )
    return saved["processes"][rank]


def gather_from_processes(value: Any, world: int) -> list[Any]:
    """``value`` (its tensors copied to the CPU) from every process of the group, in rank order;
    ``[value]`` in one process."""

    def to_cpu(tree: Any) -> Any:
        if isinstance(tree, torch.Tensor):
            return tree.cpu()
        if isinstance(tree, dict):
            return {key: to_cpu(item) for key, item in tree.items()}
        return tree

    value = to_cpu(value)
    if world == 1:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * world
    dist.all_gather_object(values, value)
    return values


class PolicyRecommender(Recommender):
    """A :class:`SlatePolicy` as a :class:`Recommender`: the most probable slate (``deterministic``)
    or a Plackett–Luce draw from ``generator``."""

    name = "ppo"

    def __init__(
        self,
        policy: SlatePolicy,
        single_item: bool = False,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if not deterministic and generator is None:
            raise ValueError("generator: a stochastic PolicyRecommender needs an explicit torch.Generator")
        self.policy = policy
        self.single_item = single_item
        self.deterministic = deterministic
        self.generator = generator

    def act(self, observation: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        batch = next(iter(observation.values())).shape[0]
        rows = active_rows(info.get("active"), batch)  # run the network only for users who see a slate
        if rows is not None:
            observation = {key: value[rows] for key, value in observation.items()}
        with torch.no_grad():
            logits, _ = self.policy(observation)
            dist = self.policy.distribution(logits)
            if self.deterministic:
                picked = dist.mode()
            else:
                assert self.generator is not None
                picked = dist.sample(self.generator, rows_of=self.draws(self.generator, batch, rows).rows_of())
        slate = fill_slates(picked, rows, batch)
        return slate[:, 0] if self.single_item else slate
