"""An in-context recommender pre-trained by supervision (``icl``): a transformer over a user's
interactions, with the population's pooled evidence on every candidate, trained across many simulated
populations to predict the myopic oracle's slate.

What it sees when it serves is what RL² sees, and nothing else:

* the user's last ``window`` interactions, one token each: the mean features of the slate shown, the
  newest history row (the consumed item's embedding, engagement, clicked, valid) and the reward. A small
  transformer encoder reads them with a learned start token, whose output is the user's context;
* a per-user ridge regression of the reward on the candidates' features over the user's whole lifetime
  (the :class:`~metarec.meta.policy.Belief` that RL² keeps with ``belief: true``), so what is older than the
  window is not lost;
* the candidates' features, which carry the population's pooled item statistics when the run trains with
  ``item_stats`` (impressions, clicks and engagement logged over every user of the population).

The candidate scorer on top is RL²'s (:class:`~metarec.meta.policy.RL2Policy`), with the transformer's
context where RL² has its GRU state. So a window of tokens replaces the recurrent memory, and training
needs no back-propagation through time: every step's tokens are an input of their own.

Training is DAgger-style imitation (Ross et al., 2011): the policy serves meta-batches of training
populations, mixing in the oracle's slate for a share of the steps that falls linearly from
``oracle_mix`` to 0 over the first half of the run. Every decision is labelled with the slate the myopic
oracle (which sees the true user state) would show, and the policy maximises that slate's Plackett–Luce
log-likelihood. The simulator's ground truth is the label only: the env's ``info`` reaches the policy only
as the user's observable response (``chosen_position``), and the policy acts the same on an env built with
``ground_truth=False``. It serves greedily (its most probable slate), as meta-eval serves RL².
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from gymnasium import spaces
from pydantic import Field, model_validator
from torch import nn

from metarec.agents.ppo.advantages import RunningMeanStd, generalized_advantages, standardise
from metarec.agents.ppo.config import PPOUpdateConfig
from metarec.agents.ppo.loss import check_rollout, clipped_terms, ensure_gradients, gradient_step, no_terms
from metarec.agents.ppo.processes import gather_from_processes, this_process_users
from metarec.config import FrozenConfig
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.policy import Memory, RL2Policy
from metarec.meta.rl2 import memory_from, memory_state
from metarec.meta.tasks import TaskDistribution, TaskShare
from metarec.parallel import all_reduce_


class InContextPolicy(RL2Policy):
    """RL²'s candidate scorer with a transformer over the user's last ``window`` interactions in place of
    its GRU (see the module docstring). The memory's ``hidden`` is the token window ``[B, window, T + 1]``:
    each token's ``T`` inputs (:meth:`RL2Policy.memory_inputs`) and a last column that is 1 where the token
    holds an interaction (0: padding, masked out of attention).

    Args:
        observation_space: a DriftingUsers ``Dict`` space (``candidates`` and ``history``).
        slate_size: K.
        hidden: the transformer's width and that of the scorer.
        window: interactions the transformer reads (the newest ones).
        layers, heads: of the transformer encoder (``heads`` divides ``hidden``).
        belief, belief_ridge: as :class:`RL2Policy`'s.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        slate_size: int,
        hidden: int = 64,
        window: int = 16,
        layers: int = 2,
        heads: int = 4,
        belief: bool = True,
        belief_ridge: float = 1.0,
    ) -> None:
        for name, value in (("window", window), ("layers", layers), ("heads", heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if hidden % heads:
            raise ValueError(f"heads: must divide hidden = {hidden}, got {heads}")
        super().__init__(observation_space, slate_size, hidden, belief, belief_ridge)
        del self.cell  # the transformer is the memory
        self.window = window
        self.token_inputs = self.candidate_dim + self.response_dim + 1
        self.embed = nn.Linear(self.token_inputs, hidden)
        self.position = nn.Parameter(torch.randn(window, hidden) * 0.02)  # oldest first, newest last
        self.start = nn.Parameter(torch.randn(hidden) * 0.02)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, 2 * hidden, dropout=0.0, batch_first=True, norm_first=True
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.encoded = nn.LayerNorm(hidden)

    def initial_memory(self, batch: int, device: torch.device | str = "cpu") -> Memory:
        memory = super().initial_memory(batch, device)
        memory.hidden = torch.zeros(batch, self.window, self.token_inputs + 1, device=device)
        return memory

    def read(self, memory: Memory, observation: dict[str, torch.Tensor], reward: torch.Tensor) -> torch.Tensor:
        """The token window once the response to the last slate is in: the oldest token drops out and the
        newest comes in (padding where the user had no slate yet)."""
        shown = (memory.last_slate != 0).any(dim=-1, keepdim=True).to(memory.hidden.dtype)  # a slate was shown
        token = self.memory_inputs(memory.last_slate, observation["history"][:, -1], reward) * shown
        return torch.cat([memory.hidden[:, 1:], torch.cat([token, shown], -1)[:, None]], dim=1)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, hidden]``: the user's context, the start token's output over the window ``tokens``."""
        batch = tokens.shape[0]
        x = self.embed(tokens[..., :-1]) + self.position
        x = torch.cat([self.start.expand(batch, 1, -1), x], dim=1)
        padding = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=tokens.device), tokens[..., -1] < 0.5], 1)
        return self.encoded(self.encoder(x, src_key_padding_mask=padding)[:, 0])

    def act_from(
        self, observation: dict[str, torch.Tensor], hidden: torch.Tensor, beliefs: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, N], value [B])`` from the token window ``hidden`` (:meth:`read`)."""
        if hidden.dim() != 3:
            raise ValueError(f"hidden: expected the token window [B, window, T + 1], got {tuple(hidden.shape)}")
        return super().act_from(observation, self.encode(hidden), beliefs)


def oracle_log_likelihood(logits: torch.Tensor, oracle: torch.Tensor) -> torch.Tensor:
    """``[B]``: the Plackett–Luce log-likelihood, under ``logits`` ``[B, N]``, of the items the oracle's slate
    ``[B, K]`` shows, in its order. The oracle may leave positions empty: from the first position that
    repeats its first item on, it shows nothing (:func:`~metarec.envs.core.choice.revenue_ordered_slate`),
    so only the prefix of distinct items is scored (the likelihood of a top-``r`` ranking)."""
    oracle = oracle.long()
    shown = shown_positions(oracle)
    taken = torch.zeros_like(logits, dtype=torch.bool)
    total = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
    for k in range(oracle.shape[1]):
        item = oracle[:, k : k + 1]
        log_p = torch.log_softmax(logits.masked_fill(taken, float("-inf")), dim=-1).gather(1, item).squeeze(1)
        total = total + torch.where(shown[:, k], log_p, torch.zeros_like(log_p))
        taken = taken | (torch.zeros_like(taken).scatter(1, item, True) & shown[:, k : k + 1])
    return total


def shown_positions(slate: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` bool: the positions a slate fills. From the first position that repeats its first item on,
    a slate shows nothing (the oracle's way of showing fewer items; a policy's slates never repeat)."""
    shown = torch.ones_like(slate, dtype=torch.bool)
    shown[:, 1:] = (slate[:, 1:] != slate[:, :1]).cumprod(dim=1).bool()
    return shown


def without_empty_positions(memory: Memory, observation: dict[str, torch.Tensor], slate: torch.Tensor) -> Memory:
    """``memory`` (:meth:`RL2Policy.remember` of ``slate``) as if only the positions the slate fills were
    shown: the slate's mean features over those, and the belief waiting for the response to those only."""
    shown = shown_positions(slate)
    if bool(shown.all()):
        return memory
    weights = shown.to(memory.last_slate.dtype)[:, :, None]  # [B, K, 1]
    features = RL2Policy.shown_features(observation, slate)
    last_slate = (features * weights).sum(1) / weights.sum(1)
    belief = memory.belief
    if belief is not None:
        belief = replace(belief, shown=belief.shown * weights)
    return replace(memory, last_slate=last_slate, belief=belief)


class InContextConfig(FrozenConfig):
    """Hyper-parameters of :class:`InContextTrainer` and of the policy it trains."""

    tasks_per_batch: int = Field(16, ge=1, description="Tasks (populations) stepping at once.")
    users_per_task: int = Field(64, ge=1, description="Users of each task stepping at once.")
    rollout_steps: int = Field(32, ge=1, description="Steps of every user between updates.")
    updates: int = Field(80, ge=1, description="Updates of a full run (each on one rollout).")
    resample_every: int = Field(4, ge=1, description="Updates between new meta-batches of tasks.")
    update_epochs: int = Field(2, ge=1, description="Passes over each rollout.")
    num_minibatches: int = Field(4, ge=1, description="Minibatches (sets of users) per pass.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam step size.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient norm clip.")
    hidden: int = Field(64, ge=1, description="Width of the transformer and of the scorer.")
    window: int = Field(16, ge=1, description="Interactions of the user the transformer reads.")
    layers: int = Field(2, ge=1, description="Transformer encoder layers.")
    heads: int = Field(4, ge=1, description="Attention heads (divides hidden).")
    belief: bool = Field(True, description="Also keep the per-user ridge regression RL²'s belief keeps.")
    belief_ridge: float = Field(1.0, gt=0, description="Prior precision of the belief's ridge regression.")
    oracle_mix: float = Field(
        0.5, ge=0, le=1,
        description="Share of steps that show the oracle's slate at the start, falling linearly to 0 over the "
        "first half of the updates (DAgger's mixture); the rest show the policy's own slate.",
    )  # fmt: skip
    rl_updates: int = Field(
        0, ge=0, description="PPO updates on the return after the imitation updates (the optional RL fine-tuning; "
        "0: none). They sample slates from the policy and reuse rollout_steps, update_epochs and num_minibatches."
    )  # fmt: skip
    rl: PPOUpdateConfig = Field(
        default_factory=lambda: PPOUpdateConfig(learning_rate=3e-4, ent_coef=0.003),
        description="PPO's settings of the fine-tuning (its learning_rate, gamma, gae_lambda, clip_coef, ent_coef, "
        "vf_coef, max_grad_norm; the rollout's shape is the imitation's).",
    )

    @model_validator(mode="after")
    def _fits(self) -> InContextConfig:
        if self.hidden % self.heads:
            raise ValueError(f"heads: must divide hidden = {self.hidden}, got {self.heads}")
        if self.tasks_per_batch * self.users_per_task % self.num_minibatches:
            raise ValueError(
                f"num_minibatches: must divide tasks_per_batch x users_per_task = "
                f"{self.tasks_per_batch * self.users_per_task}, got {self.num_minibatches}"
            )
        return self

    def make_policy(self, observation_space: Any, slate_size: int) -> InContextPolicy:
        """The policy these settings train (weights drawn from torch's global generator)."""
        return InContextPolicy(observation_space, slate_size, self.hidden, self.window, self.layers, self.heads,
                               self.belief, self.belief_ridge)  # fmt: skip


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

