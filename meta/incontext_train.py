"""Training of the in-context recommender (:mod:`metarec.meta.incontext`): DAgger-style imitation of the
myopic oracle's slates over meta-batches of training populations, then, optionally, PPO on the return.

:class:`InContextTrainer` is an :class:`~metarec.meta.rl2.RL2Trainer` whose env computes the ground truth
(the oracle's slate is the label) and whose memory is the transformer's token window: the task stream, the
users, the checkpoints, the processes and the PPO fine-tuning are RL²'s, and only the replay differs (a
minibatch's token windows are rebuilt from the rollout, with no gradient through them, where RL² replays its
GRU). The policy's inputs come from observations and the users' observable responses only
(``chosen_position``), as when it serves.
"""

from __future__ import annotations

from typing import Any

import torch

from metarec.meta.incontext import oracle_log_likelihood, without_empty_positions
from metarec.meta.policy import Memory
from metarec.meta.rl2 import RL2Trainer
from metarec.parallel import all_reduce_


class InContextTrainer(RL2Trainer):
    """Trains an :class:`~metarec.meta.incontext.InContextPolicy` on tasks of ``split``: ``config.updates``
    updates of imitation of the oracle's slates, then ``config.rl_updates`` of PPO on the return. The
    arguments are :class:`~metarec.meta.rl2.RL2Trainer`'s, with an
    :class:`~metarec.meta.incontext.InContextConfig`."""

    name = "icl"
    ground_truth = True  # the oracle's slate is the label (never an input of the policy)

    def oracle_share(self) -> float:
        """The share of steps that show the oracle's slate at this update."""
        half = max(self.config.updates / 2, 1.0)
        return self.config.oracle_mix * max(0.0, 1.0 - self.update / half)

    def collect_imitation(self) -> dict[str, Any]:
        """One rollout of ``rollout_steps`` steps from every user: the policy's inputs at each decision
        (observation, token window, belief's predictions) and the oracle's slate, ``[L, B, ...]``."""
        steps, share = self.config.rollout_steps, self.oracle_share()
        observations: dict[str, list[torch.Tensor]] = {key: [] for key in self.observation}
        out: dict[str, list[torch.Tensor]] = {"tokens": [], "beliefs": [], "labels": [], "rewards": [], "agree": []}
        batch = self.total_users
        with torch.no_grad():
            for _ in range(steps):
                tokens = self.policy.read(self.memory, self.observation, self.last_reward)
                beliefs = self.policy.believe(self.memory, self.observation, self.config.users_per_task)
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

    def learn_imitation(self, rollout: dict[str, Any]) -> dict[str, float]:
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
            return self.learn_imitation(self.collect_imitation())
        if self.update == self.config.updates:  # the fine-tuning's step size, from its first update on
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.rl_learning_rate
        return super().step()

    @property
    def done(self) -> bool:
        return self.update >= self.config.updates + self.config.rl_updates

    def replay(self, rollout: dict[str, Any], users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs, entropies and values ``[L, U]`` of the rollout's slates for the ``users``: each step's
        token window rebuilt from the window at the rollout's start and each step's response, emptied where a
        user was replaced (as :meth:`RL2Policy.reset_memory` does), then one pass over the ``L x U`` steps."""
        steps = rollout["slates"].shape[0]
        observation = {key: v[:, users] for key, v in rollout["observations"].items()}
        keep = 1.0 - rollout["dones"][:, users]
        window = rollout["start_memory"].hidden[users]
        windows = []
        with torch.no_grad():  # the windows are inputs: no parameter shapes them
            for t in range(steps):
                if t > 0:  # the user in a row that finished at t - 1 is new
                    window = window * keep[t - 1, :, None, None]
                memory = Memory(window, rollout["last_slate"][t, users])
                window = self.policy.read(memory, {"history": observation["history"][t]},
                                          rollout["last_reward"][t, users])  # fmt: skip
                windows.append(window)
        flat = {key: v.flatten(0, 1) for key, v in observation.items()}
        beliefs = None if rollout["beliefs"] is None else rollout["beliefs"][:, users].flatten(0, 1)
        logits, value = self.policy.act_from(flat, torch.stack(windows).flatten(0, 1), beliefs)
        dist = self.policy.distribution(logits)
        slate = rollout["slates"][:, users].flatten(0, 1)
        shape = (steps, len(users))
        return dist.log_prob(slate).reshape(shape), dist.entropy(slate).reshape(shape), value.reshape(shape)
