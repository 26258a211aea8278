"""Training of the in-context recommender (:mod:`metarec.meta.incontext`): DAgger-style imitation of the
myopic oracle's slates over meta-batches of training populations, then, optionally, PPO on the return.

The env runs with its ground truth on, since the oracle's slate is the label; the policy's inputs are built
from observations and the users' observable responses only (``chosen_position``), as when it serves.
"""

from __future__ import annotations

from typing import Any

import torch

from metarec.agents.ppo.advantages import RunningMeanStd, generalized_advantages, standardise
from metarec.agents.ppo.loss import check_rollout, clipped_terms, ensure_gradients, gradient_step, no_terms
from metarec.agents.ppo.processes import gather_from_processes, this_process_users
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.incontext import InContextConfig, oracle_log_likelihood, without_empty_positions
from metarec.meta.rl2 import memory_from, memory_state
from metarec.meta.tasks import TaskDistribution, TaskShare
from metarec.parallel import all_reduce_


class InContextTrainer:
    """Trains an :class:`InContextPolicy` on tasks of ``split`` by imitation of the oracle's slates.

    Args:
        distribution: the task distribution; ``split`` names the training split.
        config: hyper-parameters.
        sessions: sessions per user (every task's ``population.num_sessions``).
        seed: seeds weights, the oracle mixture, minibatch order, the task stream and the users.
        device: where the env and the policy live.
        item_stats: candidates carry the population's logged item statistics.

    In a ``torch.distributed`` group each process steps its share of the meta-batch's tasks (a sharded env,
    as RL²'s), minibatches are sets of users of the whole batch, and the loss's gradients are summed over
    the processes.
    """

    name = "icl"

    def __init__(
        self,
        distribution: TaskDistribution,
        split: str,
        config: InContextConfig,
        sessions: int,
        seed: int,
        device: str | torch.device = "cpu",
        item_stats: bool = False,
    ) -> None:
        self.distribution, self.split, self.config = distribution, split, config
        self.sessions, self.seed = sessions, seed
        self.batch_index = 0
        self.share = TaskShare.of_this_process(config.tasks_per_batch, config.users_per_task, "icl.tasks_per_batch")
        self.rank, self.world = self.share.rank, self.share.world
        self.total_users, self.offset = self.share.total_users, self.share.offset
        # ground truth on: the oracle's slate is the label (never an input of the policy)
        self.env = TaskBatchVectorEnv(
            self._tasks(0), config.users_per_task, device=device, ground_truth=True,
            item_stats=item_stats, shard=self.share.env_shard(), keyed_resets=True,
        )  # fmt: skip
        self.device = self.env.device
        self.rows_of = self.share.rows_of(self.device)
        torch.manual_seed(seed)  # initial weights only
        self.policy = config.make_policy(self.env.single_observation_space, self.env.model.slate_size).to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.learning_rate, eps=1e-5)
        self.generator = torch.Generator(device=self.device).manual_seed(seed + 7919)
        self.update = 0
        self.global_step = 0
        self.return_stats = RunningMeanStd(self.device)  # the fine-tuning's reward scale
        self._start_users(self._env_seed(0))

    def _tasks(self, index: int) -> list[Any]:
        return self.share.tasks(self.distribution, self.split, self.seed, index, self.sessions)

    def _env_seed(self, index: int) -> int:
        return self.seed * 1_000_003 + index

    def _start_users(self, seed: int) -> None:
        users = self.env.num_envs
        self.observation, self.info = self.env.reset(seed=seed)
        self.memory = self.policy.initial_memory(users, self.device)
        self.last_reward = torch.zeros(users, device=self.device)
        self.discounted_return = torch.zeros(users, dtype=torch.float64, device=self.device)

    def _next_task_batch(self) -> None:
        self.batch_index += 1
        self.env.set_tasks(self._tasks(self.batch_index))
        self._start_users(self._env_seed(self.batch_index))

    def oracle_share(self) -> float:
        """The share of steps that show the oracle's slate at this update."""
        half = max(self.config.updates / 2, 1.0)
        return self.config.oracle_mix * max(0.0, 1.0 - self.update / half)

    def collect(self) -> dict[str, Any]:
        """One rollout of ``rollout_steps`` steps from every user: the policy's inputs at each decision
        (observation, token window, belief's predictions) and the oracle's slate, ``[L, B, ...]``."""
        steps, share = self.config.rollout_steps, self.oracle_share()
        observations: dict[str, list[torch.Tensor]] = {key: [] for key in self.observation}
        out: dict[str, list[torch.Tensor]] = {"tokens": [], "beliefs": [], "labels": [], "rewards": [], "agree": []}
        batch = self.total_users
        with torch.no_grad():
            for _ in range(steps):
                tokens = self.policy.read(self.memory, self.observation, self.last_reward)
                beliefs = self.policy.believe(self.memory, self.observation)
                logits, _ = self.policy.act_from(self.observation, tokens, beliefs)
                own = torch.topk(logits, self.policy.slate_size, dim=-1).indices
                label = self.info["oracle_slate"].long()
                draw = torch.rand(batch, generator=self.generator, device=self.device)  # drawn for the whole batch
                if self.rows_of is not None:
                    draw = draw[self.rows_of[1]]
                slate = torch.where((draw < share)[:, None], label, own)
                for key, value in self.observation.items():
                    observations[key].append(value)
                out["tokens"].append(tokens)
                if beliefs is not None:
                    out["beliefs"].append(beliefs)
                out["labels"].append(label)
                out["agree"].append((own[:, 0] == label[:, 0]).float())
                remembered = without_empty_positions(
                    self.policy.remember(tokens, self.memory.belief, self.observation, slate), self.observation, slate
                )
                self.observation, reward, terminated, truncated, self.info = self.env.step(slate)
                reward = reward.float()
                remembered = self.policy.learn(remembered, reward, self.info["chosen_position"])
                done = terminated | truncated
                self.memory = self.policy.reset_memory(remembered, done)  # a new user in a finished row
                self.last_reward = reward.masked_fill(done, 0.0)
                out["rewards"].append(reward)
        rollout = {key: torch.stack(v) if v else None for key, v in out.items()}
        rollout["observations"] = {key: torch.stack(v) for key, v in observations.items()}
        self.global_step += steps * self.total_users
        return rollout

    def learn(self, rollout: dict[str, Any]) -> dict[str, float]:
        """``update_epochs`` passes of minibatch steps on the oracle slates' negative log-likelihood."""
        c = self.config
        steps, local = rollout["labels"].shape[:2]
        size = self.total_users // c.num_minibatches
        parameters = list(self.policy.parameters())
        total_loss = torch.zeros(2, dtype=torch.float64, device=self.device)  # summed loss, samples
        for _ in range(c.update_epochs):
            order = torch.randperm(self.total_users, generator=self.generator, device=self.device)
            for start in range(0, self.total_users, size):
                chosen = order[start : start + size]
                rows = chosen[(chosen >= self.offset) & (chosen < self.offset + local)] - self.offset
                count = steps * len(chosen)
                self.optimizer.zero_grad(set_to_none=False)
                for p in parameters:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                terms = torch.zeros(2, dtype=torch.float64, device=self.device)
                if len(rows):
                    nll = self.nll(rollout, rows)
                    (nll.sum() / count).backward()
                    samples = torch.tensor(float(nll.numel()), dtype=torch.float64, device=self.device)
                    terms = torch.stack([nll.detach().double().sum(), samples])
                all_reduce_([*(p.grad for p in parameters), terms])
                if not bool(torch.isfinite(terms).all()):
                    raise FloatingPointError(
                        f"icl: a minibatch's loss is NaN or infinite at update {self.update + 1}; "
                        "resume from the last checkpoint"
                    )
                torch.nn.utils.clip_grad_norm_(parameters, c.max_grad_norm)
                self.optimizer.step()
                total_loss += terms
        summary = torch.stack([rollout["rewards"].double().sum(), rollout["agree"].double().sum()])
        all_reduce_([summary])
        samples = steps * self.total_users
        stats = {
            "imitation_loss": float(total_loss[0] / total_loss[1].clamp_min(1)),
            "oracle_agreement": float(summary[1]) / samples,  # the policy's own first item was the oracle's
            "oracle_share": self.oracle_share(),
            "reward": float(summary[0]) / samples,
        }
        self.update += 1
        if self.update % c.resample_every == 0:
            self._next_task_batch()
        return stats

    def nll(self, rollout: dict[str, Any], users: torch.Tensor) -> torch.Tensor:
        """``[L * U]``: minus the log-likelihood of the oracle's slates for ``users``' decisions."""
        observation = {key: v[:, users].flatten(0, 1) for key, v in rollout["observations"].items()}
        tokens = rollout["tokens"][:, users].flatten(0, 1)
        beliefs = None if rollout["beliefs"] is None else rollout["beliefs"][:, users].flatten(0, 1)
        logits, _ = self.policy.act_from(observation, tokens, beliefs)
        return -oracle_log_likelihood(logits, rollout["labels"][:, users].flatten(0, 1))

    def step(self) -> dict[str, float]:
        """One rollout and one update: imitation first, then the PPO fine-tuning."""
        if self.update < self.config.updates:
            return self.learn(self.collect())
        if self.update == self.config.updates:  # the fine-tuning's step size, from its first update on
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.rl.learning_rate
        return self.learn_return(self.collect_return())

    @property
    def done(self) -> bool:
        return self.update >= self.config.updates + self.config.rl_updates

    # ------------------------------------------------------------------ the RL fine-tuning (PPO)
    def collect_return(self) -> dict[str, Any]:
        """One rollout of slates sampled from the policy, with what PPO needs (``[L, B, ...]``)."""
        c, steps = self.config.rl, self.config.rollout_steps
        observations: dict[str, list[torch.Tensor]] = {key: [] for key in self.observation}
        keys = ("tokens", "beliefs", "slates", "log_probs", "values", "rewards", "dones", "raw_rewards")
        out: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
        with torch.no_grad():
            for _ in range(steps):
                tokens = self.policy.read(self.memory, self.observation, self.last_reward)
                beliefs = self.policy.believe(self.memory, self.observation)
                logits, value = self.policy.act_from(self.observation, tokens, beliefs)
                dist = self.policy.distribution(logits)
                slate = dist.sample(self.generator, rows_of=self.rows_of)
                for key, item in self.observation.items():
                    observations[key].append(item)
                out["tokens"].append(tokens)
                if beliefs is not None:
                    out["beliefs"].append(beliefs)
                remembered = self.policy.remember(tokens, self.memory.belief, self.observation, slate)
                self.observation, reward, terminated, truncated, self.info = self.env.step(slate)
                reward = reward.float()
                remembered = self.policy.learn(remembered, reward, self.info["chosen_position"])
                done = terminated | truncated
                self.discounted_return = self.discounted_return * c.gamma + reward
                self.return_stats.update(self.discounted_return, reduce=all_reduce_)
                self.discounted_return.masked_fill_(done, 0)
                out["slates"].append(slate)
                out["log_probs"].append(dist.log_prob(slate))
                out["values"].append(value)
                out["raw_rewards"].append(reward)
                out["rewards"].append(reward / torch.sqrt(self.return_stats.var + 1e-8).float())
                out["dones"].append(done.float())
                self.memory = self.policy.reset_memory(remembered, done)
                self.last_reward = reward.masked_fill(done, 0.0)
            tokens = self.policy.read(self.memory, self.observation, self.last_reward)
            _, next_value = self.policy.act_from(self.observation, tokens, self.policy.believe(self.memory,
                                                                                                self.observation))
        rollout = {key: torch.stack(v) if v else None for key, v in out.items()}
        rollout["observations"] = {key: torch.stack(v) for key, v in observations.items()}
        rollout["advantages"] = generalized_advantages(
            rollout["rewards"], rollout["values"], rollout["dones"], next_value, c.gamma, c.gae_lambda
        )
        rollout["returns"] = rollout["advantages"] + rollout["values"]
        self.global_step += steps * self.total_users
        return rollout

    def learn_return(self, rollout: dict[str, Any]) -> dict[str, float]:
        """PPO's clipped update on the rollout (minibatches are sets of users, as RL²'s)."""
        c, settings = self.config, self.config.rl
        check_rollout({name: rollout[name] for name in ("advantages", "returns", "values")}, all_reduce_,
                      lambda what: f"icl: {what} is NaN or infinite at update {self.update + 1} "
                      f"(env step {self.global_step}); resume from the last checkpoint")  # fmt: skip
        steps, local = rollout["slates"].shape[:2]
        size = self.total_users // c.num_minibatches
        parameters = list(self.policy.parameters())
        ensure_gradients(parameters)
        for _ in range(c.update_epochs):
            order = torch.randperm(self.total_users, generator=self.generator, device=self.device)
            for start in range(0, self.total_users, size):
                chosen = order[start : start + size]
                rows = chosen[(chosen >= self.offset) & (chosen < self.offset + local)] - self.offset
                count = steps * len(chosen)
                adv = standardise(rollout["advantages"][:, rows], count)
                terms = no_terms(self.device)
                if len(rows):
                    observation = {key: v[:, rows].flatten(0, 1) for key, v in rollout["observations"].items()}
                    beliefs = None if rollout["beliefs"] is None else rollout["beliefs"][:, rows].flatten(0, 1)
                    logits, value = self.policy.act_from(observation, rollout["tokens"][:, rows].flatten(0, 1), beliefs)
                    dist = self.policy.distribution(logits)
                    slate = rollout["slates"][:, rows].flatten(0, 1)
                    shape = (steps, len(rows))
                    terms = clipped_terms(
                        dist.log_prob(slate).reshape(shape), rollout["log_probs"][:, rows], adv,
                        value.reshape(shape), rollout["returns"][:, rows], dist.entropy(slate).reshape(shape),
                        count, settings.clip_coef,
                    )  # fmt: skip
                reported = gradient_step(
                    self.optimizer, parameters, terms, settings.ent_coef, settings.vf_coef, settings.max_grad_norm,
                    all_reduce_, lambda: f"icl: a minibatch's loss is NaN or infinite at update {self.update + 1}; "
                    "resume from the last checkpoint",
                )  # fmt: skip
        reward = torch.stack([rollout["raw_rewards"].double().sum()])
        all_reduce_([reward])
        stats = {
            "policy_loss": float(reported[0]),
            "value_loss": float(reported[1]),
            "entropy": float(reported[2]),
            "reward": float(reward[0]) / (steps * self.total_users),
        }
        self.update += 1
        if self.update % c.resample_every == 0:
            self._next_task_batch()
        return stats

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimizer, generator, counters and every process's users (in rank order)."""
        users = {
            "env": self.env.get_checkpoint(),
            "memory": memory_state(self.memory),
            "last_reward": self.last_reward.clone(),
            "discounted_return": self.discounted_return.clone(),
        }
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "global_step": self.global_step,
            "update": self.update,
            "batch_index": self.batch_index,
            "return_stats": self.return_stats.state_dict(),
            "processes": gather_from_processes(users, self.world),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        users = this_process_users(saved, self.rank, self.world)
        self.policy.load_state_dict(saved["policy"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"])
        self.global_step, self.update = int(saved["global_step"]), int(saved["update"])
        self.batch_index = int(saved["batch_index"])
        self.return_stats.load_state_dict(saved["return_stats"])
        self.env.set_tasks(self._tasks(self.batch_index))
        self.observation, self.info = self.env.load_checkpoint(users["env"])
        self.memory = memory_from(users["memory"], self.policy, self.device, "icl.belief")
        self.last_reward = users["last_reward"].to(self.device)
        self.discounted_return = users["discounted_return"].to(self.device)
