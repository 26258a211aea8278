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
from typing import Any

import torch

from metarec.agents.base import slate_size_of
from metarec.agents.nn.networks import SlatePolicy
from metarec.agents.ppo.advantages import RunningMeanStd, generalized_advantages, standardise
from metarec.agents.ppo.config import PPOConfig
from metarec.agents.ppo.loss import check_rollout, clipped_terms, ensure_gradients, gradient_step, no_terms
from metarec.agents.ppo.processes import learner_state, load_learner_state
from metarec.agents.ppo.recommender import PolicyRecommender
from metarec.parallel import all_reduce_, group_size, rank


class BatchedPPO:
    """PPO over a :class:`~metarec.envs.vector.UserSimVectorEnv` (autoreset on).

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
        self.rank, self.world = rank(), group_size()
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
        base = getattr(env, "unwrapped", env)
        if getattr(base, "compact_observation", False):  # rollouts keep indices; the policy gathers the features
            space, tables = base.full_observation_space, base.observation_tables
        else:
            space, tables = env.single_observation_space, None
        self.policy = SlatePolicy(space, slate_size, config.hidden, config.history_encoder, tables).to(self.device)
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
        self._anneal_learning_rate()
        samples = self._flat_samples(rollout)
        check_rollout({name: samples[name] for name in ("advantages", "returns", "values")}, self._sum,
                      self._non_finite_message)  # fmt: skip
        steps, local = rollout["values"].shape
        size = steps * c.num_envs  # samples of the whole rollout, step-major over every process's users
        minibatch = size // c.num_minibatches
        parameters = list(self.policy.parameters())
        ensure_gradients(parameters)
        clipfracs: list[torch.Tensor] = []
        for _epoch in range(c.update_epochs):
            order = torch.randperm(size, generator=self.generator, device=self.device)
            approx_kl = torch.zeros((), device=self.device)
            for start in range(0, size, minibatch):
                reported = self._minibatch_update(samples, order[start : start + minibatch], local, parameters)
                approx_kl = reported[3]
                clipfracs.append(reported[4])
            if c.target_kl is not None and float(approx_kl) > c.target_kl:
                break
        stats = {
            "policy_loss": float(reported[0]),
            "value_loss": float(reported[1]),
            "entropy": float(reported[2]),
            "approx_kl": float(approx_kl),
            "clipfrac": float(torch.stack(clipfracs).mean()),
            "explained_variance": self._explained_variance(samples["returns"], samples["values"], size),
            "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
        }
        self.update += 1
        return stats

    def _anneal_learning_rate(self) -> None:
        """Sets the learning rate of the schedule's position at the start of this rollout (``collect``
        has already counted it), where ``anneal_lr``."""
        c = self.config
        if c.anneal_lr:
            done_before = self.global_step - c.num_envs * c.rollout_steps
            frac = max(0.0, 1.0 - done_before / max(self.total_steps, 1))
            for group in self.optimizer.param_groups:
                group["lr"] = frac * c.learning_rate

    @staticmethod
    def _flat_samples(rollout: dict[str, Any]) -> dict[str, Any]:
        """The rollout's tensors ``[T, B, ...]`` as samples ``[T * B, ...]`` (``values`` are the old ones)."""
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
        samples = {key: flat(rollout[key]) for key in ("slates", "log_probs", "values", "advantages", "returns")}
        samples["observations"] = {key: flat(v) for key, v in rollout["observations"].items()}
        return samples

    def _minibatch_update(
        self, samples: dict[str, Any], chosen: torch.Tensor, local: int, parameters: list[torch.nn.Parameter]
    ) -> torch.Tensor:
        """One gradient step on the minibatch ``chosen`` (over every process's samples); returns its
        loss terms summed over the processes (see :data:`~metarec.agents.ppo.loss.TERMS`)."""
        c = self.config
        index = self._local_samples(chosen, local)
        count = len(chosen)
        adv = samples["advantages"][index]
        if c.normalize_advantages and count > 1:
            adv = standardise(adv, count, self._sum)
        # this process's share of the minibatch's means: sums over its samples / the minibatch's count
        terms = no_terms(self.device)
        if len(index):
            logits, value = self.policy({key: v[index] for key, v in samples["observations"].items()})
            dist = self.policy.distribution(logits)
            slates = samples["slates"][index]
            terms = clipped_terms(
                dist.log_prob(slates), samples["log_probs"][index], adv, value, samples["returns"][index],
                lambda: dist.entropy(slates), count, c.clip_coef, samples["values"][index] if c.clip_value else None,
            )  # fmt: skip
        return gradient_step(
            self.optimizer, parameters, terms, c.ent_coef, c.vf_coef, c.max_grad_norm, self._sum,
            lambda: self._non_finite_message("a minibatch's loss"),
        )  # fmt: skip

    def _explained_variance(self, returns: torch.Tensor, old_values: torch.Tensor, size: int) -> float:
        """Explained variance of the rollout's value estimates (over every process's users)."""
        moments = torch.stack([returns.double().sum(), (returns.double() ** 2).sum(),
                               (returns - old_values).double().sum(), ((returns - old_values).double() ** 2).sum()])
        self._sum([moments])
        variance = float(moments[1] / size - (moments[0] / size) ** 2)
        residual = float(moments[3] / size - (moments[2] / size) ** 2)
        return float("nan") if variance <= 0 else 1 - residual / variance

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
        return learner_state(self, users)

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        users = load_learner_state(self, saved)
        self.observation, _ = self.env.load_checkpoint(users["env"])
        self.episode_return = users["episode_return"].to(self.device)
        self.episode_length = users["episode_length"].to(self.device)
        self.discounted_return = users["discounted_return"].to(self.device)

    def recommender(self, deterministic: bool = True) -> PolicyRecommender:
        return PolicyRecommender(self.policy, single_item=self.single_item, deterministic=deterministic)
