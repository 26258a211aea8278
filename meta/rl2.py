"""RL²: a recurrent policy trained with PPO over meta-batches of tasks (Duan et al., 2016).

The "fast" learner is the GRU memory of :class:`~metarec.meta.policy.RL2Policy`, which
reads each response of a user and persists across that user's sessions; the "slow" learner is PPO
over many tasks at once (a :class:`~metarec.envs.task_batch.TaskBatchVectorEnv`). An episode is
one user's lifetime in one task, so what the memory learns to do is to find out, within a few
interactions, what this user of this population wants.

PPO here is recurrent: a rollout stores each user's memory at its start, and every minibatch (a set of users)
replays its users' steps through the GRU (truncated back-propagation through the rollout), zeroing the memory
where a user was replaced. Rewards are scaled by a running standard deviation of the discounted return, as
:class:`~metarec.agents.ppo.BatchedPPO` does. Every ``resample_every`` updates, a new meta-batch of tasks
replaces the old one (every user new).

In a ``torch.distributed`` group (``meta-train --nproc N``) each process steps its share of the
meta-batch's tasks (a sharded env: every random draw made for the whole batch, so each user's
trajectory is the one it has in one process). Minibatches are drawn over all users; each process
replays its own users of a minibatch, and the loss terms, the advantage statistics, the reward scale
and the gradients are summed over the processes, so the parameters follow the one-process run up to
floating-point summation order. A checkpoint holds every process's users; resume with the same N.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from metarec.agents.ppo.advantages import RunningMeanStd, generalized_advantages, standardise
from metarec.agents.ppo.config import PPOUpdateConfig
from metarec.agents.ppo.loss import check_rollout, clipped_terms, ensure_gradients, gradient_step, no_terms
from metarec.agents.ppo.processes import learner_state, load_learner_state
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.adversarial import AdversarialConfig, PopulationPool
from metarec.meta.evaluate import shift_interests
from metarec.meta.policy import Memory, RL2Policy, memory_from, memory_state  # noqa: F401 (re-exported)
from metarec.meta.tasks import TaskDistribution, TaskShare
from metarec.parallel import all_reduce_


class RL2Config(PPOUpdateConfig):
    """Hyper-parameters of :class:`RL2Trainer`: PPO's (:class:`~metarec.agents.ppo.config.PPOUpdateConfig`,
    with RL²'s own defaults of ``learning_rate`` and ``ent_coef``) and the meta-batch's. Here
    ``rollout_steps`` is also the BPTT window, and a minibatch is a set of users."""

    tasks_per_batch: int = Field(16, ge=1, description="Tasks (populations) stepping at once.")
    users_per_task: int = Field(64, ge=1, description="Users of each task stepping at once.")
    updates: int = Field(200, ge=1, description="PPO updates of a full run.")
    resample_every: int = Field(4, ge=1, description="Updates between new meta-batches of tasks.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam step size.")
    ent_coef: float = Field(0.003, ge=0, description="Entropy bonus weight.")
    hidden: int = Field(64, ge=1, description="Width of the policy and of its memory.")
    belief: bool = Field(
        False,
        description="Also keep, per user, a ridge regression of the reward on candidate features (LinUCB's "
        "statistics) and score candidates with its prediction and uncertainty (see RL2Policy).",
    )
    belief_ridge: float = Field(1.0, gt=0, description="Prior precision of the belief's ridge regression.")
    population: bool = Field(
        False,
        description="A population memory beside the belief: each candidate is also scored with what the "
        "beliefs of the population's other users predict, weighted by how well each explains this user's "
        "responses, and with their pooled regression (see population_predictions). It pools the population's "
        "users, so they are not independent. Needs belief.",
    )
    population_noise: float = Field(1.0, gt=0, description="The reward noise variance the population memory assumes.")
    item_memory: bool = Field(
        False,
        description="An item memory beside the belief: each candidate is also scored with what it earned beyond "
        "what the beliefs of the users it was shown to predicted, pooled over the population's users (see "
        "remember_residuals). It pools the population's users, like the population memory.",
    )
    item_prior: float = Field(2.0, gt=0, description="Pseudo-counts that shrink the item memory's mean toward 0.")
    change_test: float = Field(
        0.0, ge=0,
        description="Serving only (meta-eval, evaluate, A/B arms; training meets no restarts): test each user for a "
        "change of interests after every response, a CUSUM of how much better a belief that forgets predicts the "
        "responses than the belief does. Where it passes this many nats, the user is treated as new: the belief "
        "restarts from the forgetting one, the memory from zero (see detect_change). 0: no test. Needs belief.",
    )  # fmt: skip
    change_discount: float = Field(0.9, gt=0, lt=1, description="What the test's forgetting belief keeps per step.")
    change_noise: float = Field(0.1, gt=0, description="The reward noise variance the change test assumes.")
    rescale_time: bool = Field(False, description="Serving only: serve each population in the unit of time that "
                               "brings its catalogue's mean item length into the training catalogues' range (see "
                               "metarec.meta.time_unit). Minutes inside the range.")  # fmt: skip
    redraw_hazard: float = Field(
        0.0, ge=0, lt=1,
        description="Training only: at each step, each user's interests are drawn anew (a new cluster, as the "
        "adaptation protocol's shift and the model's abrupt shifts do) with this probability, so that the memory "
        "learns to notice a changed user. 0: never.",
    )  # fmt: skip
    adversarial: AdversarialConfig | None = Field(
        None,
        description="Train on a pool of populations, drawing more often those the learner does worst on (see "
        "metarec.meta.adversarial); None: fresh populations, uniformly, for every meta-batch.",
    )

    @model_validator(mode="after")
    def _population_needs_belief(self) -> RL2Config:
        if self.population and not self.belief:
            raise ValueError("population: the population memory pools the users' beliefs; set belief: true")
        if self.item_memory and not self.belief:
            raise ValueError("item_memory: the item memory pools the residuals of the users' beliefs; set belief: true")
        if self.change_test and not self.belief:
            raise ValueError("change_test: the change test restarts the users' beliefs; set belief: true")
        if self.adversarial is not None and self.adversarial.pool < self.tasks_per_batch:
            raise ValueError(
                f"adversarial.pool: expected at least tasks_per_batch ({self.tasks_per_batch}), "
                f"got {self.adversarial.pool}"
            )
        return self

    def make_policy(self, observation_space: Any, slate_size: int) -> RL2Policy:
        """The policy these settings serve (weights drawn from torch's global generator); RL2Trainer trains it
        without the change test."""
        return RL2Policy(observation_space, slate_size, self.hidden, self.belief, self.belief_ridge, self.population,
                         self.population_noise, self.item_memory, self.item_prior, self.change_test,
                         self.change_discount, self.change_noise)  # fmt: skip


class RL2Trainer:
    """Trains a :class:`RL2Policy` on tasks of ``split``.

    Args:
        distribution: the task distribution; ``split`` names the training split.
        config: hyper-parameters.
        sessions: sessions per user (every task's ``population.num_sessions``).
        seed: seeds weights, slate sampling, minibatch order, the task stream and the users.
        device: where the env and the policy live.
        item_stats: candidates carry the population's logged item statistics (see
            :class:`~metarec.envs.task_batch.TaskBatchVectorEnv`).
    """

    name = "rl2"
    ground_truth = False  # whether the env computes the ground truth (a trainer that learns from it says so)

    def __init__(
        self,
        distribution: TaskDistribution,
        split: str,
        config: RL2Config,
        sessions: int,
        seed: int,
        device: str | torch.device = "cpu",
        item_stats: bool = False,
    ) -> None:
        if config.tasks_per_batch * config.users_per_task % config.num_minibatches:
            raise ValueError(
                f"num_minibatches: must divide tasks_per_batch x users_per_task = "
                f"{config.tasks_per_batch * config.users_per_task}, got {config.num_minibatches}"
            )
        self.distribution, self.split, self.config = distribution, split, config
        self.sessions, self.seed = sessions, seed
        self.batch_index = 0
        adversarial = getattr(config, "adversarial", None)
        self.pool = None if adversarial is None else PopulationPool(adversarial, distribution, split, seed, sessions)
        self.pool_batch = None if self.pool is None else self.pool.draw(0, config.tasks_per_batch)
        self.share = TaskShare.of_this_process(config.tasks_per_batch, config.users_per_task,
                                               f"{self.name}.tasks_per_batch")  # fmt: skip
        self.rank, self.world = self.share.rank, self.share.world
        self.total_users, self.offset = self.share.total_users, self.share.offset
        # keyed resets in one process too, so that N processes step exactly its users
        self.env = TaskBatchVectorEnv(  # the sampler measures regret against the oracle: it needs the ground truth
            self._tasks(0), config.users_per_task, device=device, ground_truth=self.ground_truth or bool(self.pool),
            item_stats=item_stats, shard=self.share.env_shard(), keyed_resets=True,
        )  # fmt: skip
        self.device = self.env.device
        self.rows_of = self.share.rows_of(self.device)
        torch.manual_seed(seed)  # initial weights only
        serving = config.model_copy(update={"change_test": 0.0})  # the change test serves only
        self.policy = serving.make_policy(self.env.single_observation_space, self.env.model.slate_size).to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.learning_rate, eps=1e-5)
        self.generator = torch.Generator(device=self.device).manual_seed(seed + 7919)
        self.update = 0
        self.global_step = 0
        self.return_stats = RunningMeanStd(self.device)
        self._start_users(self._env_seed(0))

    # ------------------------------------------------------------------ tasks and users
    def _tasks(self, index: int) -> list[Any]:
        """This process's tasks of meta-batch ``index`` (of the pool's batch drawn for it, when adversarial)."""
        if self.pool is None:
            return self.share.tasks(self.distribution, self.split, self.seed, index, self.sessions)
        assert self.pool_batch is not None
        mine = self.pool_batch[self.rank * self.share.local_tasks : (self.rank + 1) * self.share.local_tasks]
        return [self.pool.tasks[i] for i in mine]

    def _env_seed(self, index: int) -> int:
        return self.seed * 1_000_003 + index

    def _start_users(self, seed: int) -> None:
        users = self.env.num_envs
        self.observation, self.info = self.env.reset(seed=seed)
        self.memory = self.policy.initial_memory(users, self.device)
        self.last_reward = torch.zeros(users, device=self.device)
        self.discounted_return = torch.zeros(users, dtype=torch.float64, device=self.device)
        # regret and oracle value summed per row since the meta-batch started (for the adversarial sampler)
        self.regret_sums = torch.zeros(2, users, dtype=torch.float64, device=self.device)

    def _next_task_batch(self) -> None:
        self.batch_index += 1
        if self.pool is not None:
            self._record_regret()
            self.pool_batch = self.pool.draw(self.batch_index, self.config.tasks_per_batch)
        self.env.set_tasks(self._tasks(self.batch_index))
        self._start_users(self._env_seed(self.batch_index))

    def _record_regret(self) -> None:
        """Hands the relative regret of this meta-batch's populations, measured over every process's users, to
        the sampler."""
        assert self.pool is not None and self.pool_batch is not None
        c, share = self.config, self.share
        sums = torch.zeros(2, c.tasks_per_batch, dtype=torch.float64, device=self.device)
        local = self.regret_sums.reshape(2, share.local_tasks, c.users_per_task).sum(2)
        sums[:, self.rank * share.local_tasks : (self.rank + 1) * share.local_tasks] = local
        all_reduce_([sums])
        regret, value = sums.cpu().numpy()
        self.pool.record(self.pool_batch, regret / np.maximum(value, 1e-12))
        self.regret_sums.zero_()

    def _redraw_users(self, done: torch.Tensor) -> None:
        """Draws anew the interests of the users still present that ``rl2.redraw_hazard`` picks (drawn for the
        whole batch, so every process picks the same users)."""
        hazard = self.config.redraw_hazard
        if hazard == 0:
            return
        draw = torch.rand(self.total_users, generator=self.generator, device=self.device)
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator, device=self.device))
        if self.rows_of is not None:
            draw = draw[self.rows_of[1]]
        rows = (draw < hazard) & ~done
        if bool(rows.any()):
            shift_interests(self.env, rows, seed)

    # ------------------------------------------------------------------ rollouts and updates
    def collect(self) -> dict[str, Any]:
        """One rollout of ``rollout_steps`` steps from every user; tensors ``[L, B, ...]``."""
        c, steps = self.config, self.config.rollout_steps
        start_memory = self.memory.clone()
        observations: dict[str, list[torch.Tensor]] = {key: [] for key in self.observation}
        keys = ("slates", "log_probs", "values", "rewards", "dones", "last_slate", "last_reward", "raw_rewards")
        out: dict[str, list[torch.Tensor]] = {key: [] for key in (*keys, "beliefs")}
        with torch.no_grad():
            for _ in range(steps):
                for key, value in self.observation.items():
                    observations[key].append(value)
                out["last_slate"].append(self.memory.last_slate)
                out["last_reward"].append(self.last_reward)
                hidden = self.policy.read(self.memory, self.observation, self.last_reward)
                beliefs = self.policy.believe(self.memory, self.observation, self.config.users_per_task)
                logits, value = self.policy.act_from(self.observation, hidden, beliefs)
                dist = self.policy.distribution(logits)
                slate = dist.sample(self.generator, rows_of=self.rows_of)
                if beliefs is not None:
                    out["beliefs"].append(beliefs)
                remembered = self.policy.remember(hidden, self.memory.belief, self.observation, slate)
                observation, reward, terminated, truncated, info = self.env.step(slate)
                if self.pool is not None:  # the oracle's value of the state the slate was shown in
                    self.regret_sums[0] += info["regret"]
                    self.regret_sums[1] += info["regret"] + info["expected_reward"]
                reward = reward.float()
                remembered = self.policy.learn(remembered, reward, info["chosen_position"])
                done = terminated | truncated
                self._redraw_users(done)
                self.discounted_return = self.discounted_return * c.gamma + reward
                self.return_stats.update(self.discounted_return, reduce=all_reduce_)
                self.discounted_return.masked_fill_(done, 0)
                out["slates"].append(slate)
                out["log_probs"].append(dist.log_prob(slate))
                out["values"].append(value)
                out["raw_rewards"].append(reward)
                out["rewards"].append(reward / torch.sqrt(self.return_stats.var + 1e-8).float())
                out["dones"].append(done.float())
                # a new user in a finished row starts with an empty memory
                self.memory = RL2Policy.reset_memory(remembered, done)
                self.last_reward = reward.masked_fill(done, 0.0)
                self.observation = observation
            hidden = self.policy.read(self.memory, self.observation, self.last_reward)
            beliefs = self.policy.believe(self.memory, self.observation, self.config.users_per_task)
            _, next_value = self.policy.act_from(self.observation, hidden, beliefs)
        rollout = {key: torch.stack(v) if v else None for key, v in out.items()}
        rollout["observations"] = {key: torch.stack(v) for key, v in observations.items()}
        rollout["advantages"] = generalized_advantages(
            rollout["rewards"], rollout["values"], rollout["dones"], next_value, c.gamma, c.gae_lambda
        )
        rollout["returns"] = rollout["advantages"] + rollout["values"]
        rollout["start_memory"] = start_memory
        self.global_step += steps * self.total_users
        return rollout

    def replay(self, rollout: dict[str, Any], users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs, entropies and values ``[L, U]`` of the rollout's slates for the ``users``,
        recomputed through the memory (gradients flow through the whole window). Only the GRU cell
        runs step by step; everything else runs over the ``L x U`` steps at once."""
        steps = rollout["slates"].shape[0]
        observation = {key: v[:, users] for key, v in rollout["observations"].items()}
        inputs = self.policy.memory_inputs(
            rollout["last_slate"][:, users], observation["history"][:, :, -1], rollout["last_reward"][:, users]
        )  # [L, U, in]
        keep = 1.0 - rollout["dones"][:, users]
        hidden = rollout["start_memory"].hidden[users]
        hiddens = []
        for t in range(steps):
            if t > 0:  # the user in a row that finished at t - 1 is new
                hidden = hidden * keep[t - 1, :, None]
            hidden = self.policy.cell(inputs[t], hidden)
            hiddens.append(hidden)
        flat = {key: v.reshape(-1, *v.shape[2:]) for key, v in observation.items()}
        beliefs = None if rollout["beliefs"] is None else rollout["beliefs"][:, users].flatten(0, 1)
        logits, value = self.policy.act_from(flat, torch.stack(hiddens).reshape(-1, hidden.shape[-1]), beliefs)
        dist = self.policy.distribution(logits)
        slate = rollout["slates"][:, users].reshape(-1, rollout["slates"].shape[2])
        shape = (steps, len(users))
        return dist.log_prob(slate).reshape(shape), dist.entropy(slate).reshape(shape), value.reshape(shape)

    def learn(self, rollout: dict[str, Any]) -> dict[str, float]:
        c = self.config
        check_rollout({name: rollout[name] for name in ("advantages", "returns", "values")}, all_reduce_,
                      lambda what: f"rl2: {what} is NaN or infinite at update {self.update + 1} "
                      f"(env step {self.global_step}); resume from the last checkpoint")  # fmt: skip
        steps, local = rollout["slates"].shape[:2]
        size = self.total_users // c.num_minibatches
        parameters = list(self.policy.parameters())
        ensure_gradients(parameters)
        for _ in range(c.update_epochs):
            order = torch.randperm(self.total_users, generator=self.generator, device=self.device)
            for start in range(0, self.total_users, size):
                chosen = order[start : start + size]  # users of the whole batch
                rows = chosen[(chosen >= self.offset) & (chosen < self.offset + local)] - self.offset  # ours
                count = steps * len(chosen)
                adv = standardise(rollout["advantages"][:, rows], count)
                # this process's share of the minibatch means (divided by the whole minibatch's count)
                terms = no_terms(self.device)
                if len(rows):
                    log_prob, entropy, value = self.replay(rollout, rows)
                    terms = clipped_terms(log_prob, rollout["log_probs"][:, rows], adv, value,
                                          rollout["returns"][:, rows], entropy, count, c.clip_coef)  # fmt: skip
                reported = gradient_step(
                    self.optimizer, parameters, terms, c.ent_coef, c.vf_coef, c.max_grad_norm, all_reduce_,
                    lambda: f"rl2: a minibatch's loss is NaN or infinite at update {self.update + 1}; "
                    "resume from the last checkpoint",
                )
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
        elif self.pool is not None and self.done:  # the last meta-batch's regret counts too
            self._record_regret()
        measured = None if self.pool is None else self.pool.summary()["mean_relative_regret"]
        if measured is not None:  # the mean over the populations measured so far
            stats["pool_relative_regret"] = measured
        return stats

    def step(self) -> dict[str, float]:
        """One rollout and one update."""
        return self.learn(self.collect())

    @property
    def done(self) -> bool:
        return self.update >= self.config.updates

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Weights, optimizer, generator and counters, and every process's users (``processes``: one
        entry per process of the run, gathered in rank order)."""
        users = {
            "env": self.env.get_checkpoint(),
            "memory": memory_state(self.memory),
            "last_reward": self.last_reward.clone(),
            "discounted_return": self.discounted_return.clone(),
            "regret_sums": self.regret_sums.clone(),
        }
        state = {**learner_state(self, users), "batch_index": self.batch_index}
        if self.pool is not None:
            assert self.pool_batch is not None
            state["pool"] = {**self.pool.state_dict(), "batch": torch.from_numpy(self.pool_batch.copy())}
        return state

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        users = load_learner_state(self, saved)
        self.batch_index = int(saved["batch_index"])
        if self.pool is not None:
            self.pool.load_state_dict(saved["pool"])
            self.pool_batch = saved["pool"]["batch"].numpy().copy()
        self.env.set_tasks(self._tasks(self.batch_index))
        self.observation, self.info = self.env.load_checkpoint(users["env"])
        self.memory = memory_from(users["memory"], self.policy, self.device, f"{self.name}.belief")
        self.last_reward = users["last_reward"].to(self.device)
        self.discounted_return = users["discounted_return"].to(self.device)
        if "regret_sums" in users:  # (a checkpoint of a version before the adversarial sampler has none)
            self.regret_sums = users["regret_sums"].to(self.device)
