"""``metarec/RecSimNG-v0``: RecSim NG's own simulations as a metarec vector environment.

This module does not import TensorFlow; building an environment does (through
:mod:`metarec.envs.recsim_ng.bridge`), and says which extra to install when it is missing.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from pydantic import Field, model_validator

from metarec.config import validate_config
from metarec.envs.adapters import check_slates
from metarec.envs.core.finite import Float32Config
from metarec.envs.recsim_ng.port import NGInterestEvolutionConfig, NGInterestEvolutionModel
from metarec.envs.vector import batch_space_views, check_vector_arguments

Simulation = Literal["interest_evolution", "ecosystem"]
EXTRA_HINT = (
    "metarec/RecSimNG-v0 needs the recsim-ng extra, which pins TensorFlow 2.15 and NumPy < 2 and so "
    "lives in its own environment: python3.11 -m venv .venv-recsim-ng && "
    ".venv-recsim-ng/bin/pip install 'torch==2.13.0' -e '.[recsim-ng]' (or run make test-recsim-ng, which builds it)"
)


def load_bridge() -> Any:
    """:mod:`metarec.envs.recsim_ng.bridge`, or an ImportError saying which extra to install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is first imported
    try:
        # RecSim NG imports gym 0.24, which prints a deprecation notice on import; TensorFlow logs.
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import recsim_ng  # noqa: F401
            import tensorflow  # noqa: F401

            from metarec.envs.recsim_ng import bridge as recsim_ng_bridge
    except ImportError as missing:
        raise ImportError(f"{EXTRA_HINT} ({missing})") from missing
    return recsim_ng_bridge


class RecSimNGConfig(Float32Config):
    """Which RecSim NG simulation to run, and its parameters (RecSim NG's defaults)."""

    simulation: Simulation = Field(
        "interest_evolution",
        description="'interest_evolution' (recsys_partially_observable_rl) or 'ecosystem' (ecosystem_simulation).",
    )
    num_topics: int = Field(2, ge=1, description="Topics: the dimension of interests and document features.")
    slate_size: int | None = Field(None, ge=1, description="Documents per slate (default: 2, ecosystem 3).")
    max_steps: int = Field(
        100, ge=1, description="Steps before every user is truncated (a fixed horizon, as RecSim NG runs)."
    )
    num_docs: int = Field(100, ge=1, description="interest_evolution: documents in the frozen corpus.")
    corpus_seed: int | None = Field(
        0,
        ge=0,
        description=(
            "interest_evolution: the frozen corpus is metarec's draw for this seed (the documents of "
            "RecSimNGInterestEvolution-v0 with the same corpus_seed), put in RecSim NG's StaticCorpus; "
            "None: RecSim NG's CorpusWithTopicAndQuality draws it at each full reset."
        ),
    )
    provider_seed: int = Field(0, ge=0, description="ecosystem: seed of the provider clusters.")
    num_provider_clusters: int = Field(40, ge=1, description="ecosystem: provider clusters (5 documents per provider).")
    provider_fan_out: int = Field(2, ge=1, description="ecosystem: providers per cluster.")
    provider_disp: float = Field(64.0, gt=0, description="ecosystem: variance of the cluster centres.")

    @model_validator(mode="after")
    def _fits(self) -> RecSimNGConfig:
        if self.slate_size is not None and self.slate_size > self.docs:
            raise ValueError(f"slate_size: at most the {self.docs} documents, got {self.slate_size}")
        return self

    @property
    def slate(self) -> int:
        return self.slate_size or (2 if self.simulation == "interest_evolution" else 3)

    @property
    def docs(self) -> int:
        if self.simulation == "interest_evolution":
            return self.num_docs
        return self.num_provider_clusters * self.provider_fan_out * 5


def metarec_corpus(config: RecSimNGConfig) -> dict[str, np.ndarray]:
    """The documents ``RecSimNGInterestEvolution-v0`` draws for ``config.corpus_seed``."""
    port = NGInterestEvolutionConfig(
        num_topics=config.num_topics, num_docs=config.num_docs, slate_size=config.slate, corpus_seed=config.corpus_seed
    )
    return NGInterestEvolutionModel.make_corpus(port)


def _torch(tensor: Any, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(tensor.numpy())).to(device)


class RecSimNGVectorEnv(VectorEnv):
    """``num_envs`` users of a RecSim NG simulation, stepped one slate at a time by RecSim NG.

    ## Description
    Runs RecSim NG's own entities (users, corpus, choice model, metrics) in its own ``Network``
    with the agent as the recommender: each step the agent sees the available documents and
    chooses a slate, and RecSim NG's user responds. Observations, actions, rewards and ``info`` follow
    metarec's conventions (torch tensors, a ``candidates`` entry of ``[num_envs, N, F]``), so metarec's
    agents, training and evaluation run on it unchanged. Two simulations (``simulation=``):

    * ``"interest_evolution"``: ``recsys_partially_observable_rl`` (``InterestEvolutionUser``, a
      frozen corpus of 100 documents with topic and quality, slate 2). Same dynamics as metarec's
      port ``metarec/RecSimNGInterestEvolution-v0``, and by default the same documents.
    * ``"ecosystem"``: ``ecosystem_simulation`` (``ClusteredNormalUserCoreDispersion`` users around 80
      content providers, ``ViableCorpus``: 400 documents drawn anew each step from providers weighted by
      their discounted clicks, slate 3).

    ## Observation Space
    ``Dict``. ``candidates``: interest_evolution ``Box((100, T + 2))`` (features, quality, length of
    each document, as in the port); ecosystem ``Box((400, T + 1))`` (features, log1p of the document's
    provider's discounted clicks). ``response`` ``Box((K, 2))``: the previous slate's choice (one-hot)
    and the reward per position. ecosystem also has ``user`` ``Box((T,))``: RecSim NG's user observation
    (the user's interests, which that simulation makes observable).

    ## Action Space
    ``MultiDiscrete([N] * K)``: indices into this step's documents. Unlike metarec's own environments,
    a slate that repeats a document shows it twice (RecSim NG's users have no notion of an empty
    slot); metarec's agents never repeat one.

    ## Rewards
    interest_evolution: ``ConsumedTimeAsRewardMetrics`` (the consumed time). ecosystem:
    ``UtilityAsRewardMetrics`` (the user's utility of the chosen document, drawn by the user entity
    from this step's choice; RecSim NG's metrics report it two steps later).

    ``info`` (as metarec's environments): ``clicked``, ``chosen_position`` and ``chosen_candidate`` (-1
    when nothing was chosen), ``consumed_time`` (interest_evolution), ``user_interest`` (with
    ``ground_truth``). There is no oracle: RecSim NG's models have no myopic optimum to hand over.

    ## Starting State
    RecSim NG's: interests ~ N(0, I) (interest_evolution); a Gaussian mixture around the providers
    (ecosystem).

    ## Episode End
    Never terminated; every user is truncated after ``max_steps`` steps, all at once (RecSim NG steps
    its users in lockstep). With ``autoreset`` (same-step mode) a new batch of users starts in the
    same ``step``, and ``info["final_obs"]`` holds the last observation; ``reset`` with a
    ``reset_mask`` is refused.

    ## Arguments
    ``num_envs``, the fields of :class:`RecSimNGConfig` as keywords (or ``config=``), ``device``
    (where the returned tensors live; RecSim NG itself runs on TensorFlow's CPU), ``autoreset``,
    ``ground_truth`` (``info["user_interest"]``: the users' true interests, for analysis only).

    ## Seeding
    ``reset(seed=s)`` seeds TensorFlow (``tf.random.set_seed``) and recompiles the step functions so
    their random streams restart: the same seed and actions repeat a run within a process. RecSim NG
    draws from TensorFlow's global stream, so this environment cannot take a ``torch.Generator``.

    ## Version History
    * v0: initial version.
    """

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int,
        config: Any = None,
        *,
        device: Any = "cpu",
        ground_truth: bool = True,
        autoreset: bool = True,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        self.num_envs = check_vector_arguments(num_envs, render_mode)
        base = dict(config or {}) if not isinstance(config, RecSimNGConfig) else config.model_dump()
        self.config: RecSimNGConfig = validate_config(RecSimNGConfig, {**base, **overrides})
        self.device = torch.device(device)
        self.ground_truth = ground_truth
        self.autoreset = autoreset
        self.metadata = {
            **type(self).metadata,
            "autoreset_mode": AutoresetMode.SAME_STEP if autoreset else AutoresetMode.DISABLED,
        }
        self.num_candidates = self.config.docs
        self.slate_size = self.config.slate
        self._bridge = load_bridge()
        import tensorflow as tf

        self._tf = tf
        self._slate = tf.Variable(tf.zeros((self.num_envs, self.slate_size), tf.int32), trainable=False)
        options = {**self.config.model_dump(), "slate_size": self.slate_size}
        if self.config.simulation == "interest_evolution":
            options["documents"] = metarec_corpus(self.config) if self.config.corpus_seed is not None else None
            self._story = self._bridge.interest_evolution(self.num_envs, options, self._slate)
            features = self.config.num_topics + 2
        else:
            self._story = self._bridge.ecosystem(self.num_envs, options, self._slate)
            features = self.config.num_topics + 1
        self._stepper = self._bridge.Stepper(self._story, self._slate)
        self._utility = self._bridge.ecosystem_utility(self._story) if self.config.simulation == "ecosystem" else None
        interest = self.config.simulation == "interest_evolution"
        single = {
            "candidates": spaces.Box(-np.inf, np.inf, (self.num_candidates, features), np.float32),
            # consumed time is never negative; a utility may be
            "response": spaces.Box(0.0 if interest else -np.inf, np.inf, (self.slate_size, 2), np.float32),
        }
        if self.config.simulation == "ecosystem":
            single["user"] = spaces.Box(-np.inf, np.inf, (self.config.num_topics,), np.float32)
        self.single_observation_space = spaces.Dict(single)
        self.observation_space = batch_space_views(self.single_observation_space, self.num_envs)
        self.single_action_space = spaces.MultiDiscrete(np.full(self.slate_size, self.num_candidates, dtype=np.int64))
        self.action_space = batch_space_views(self.single_action_space, self.num_envs)
        self._previous: dict | None = None
        self._current: dict | None = None
        self._response = torch.zeros(self.num_envs, self.slate_size, 2, device=self.device)
        self._t = 0

    # --- Gymnasium API ---------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if (options or {}).get("reset_mask") is not None:
            raise ValueError(
                "options['reset_mask']: RecSim NG steps every user in lockstep, so only a full reset is possible"
            )
        if seed is not None:
            self._tf.random.set_seed(seed)
            self._stepper.compile()
            if self._utility is not None:
                self._utility = self._bridge.ecosystem_utility(self._story)
        self._start()
        return self._observe(), self._info({})

    def step(self, actions: Any) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        if self._current is None:
            raise RuntimeError("step() called before reset()")
        slate = check_slates(actions, self.num_candidates, self.slate_size, self.num_envs, False)
        slate = slate.cpu().numpy() if isinstance(slate, torch.Tensor) else slate
        self._slate.assign(slate.astype(np.int32))
        slate_rows = torch.from_numpy(slate.astype(np.int64)).to(self.device)
        full = self._stepper.finish(self._previous, self._current)
        choice = _torch(full["user response"]["choice"], self.device).to(torch.int64)  # [B]; K = nothing chosen
        if self._utility is not None:
            reward = _torch(self._utility(full), self.device).to(torch.float32)
        else:
            reward = _torch(full["user response"]["consumed_time"], self.device).clamp(min=0.0)
        clicked = choice < self.slate_size
        at_choice = torch.nn.functional.one_hot(choice, self.slate_size + 1)[:, : self.slate_size].to(torch.float32)
        self._response = torch.stack([at_choice, at_choice * reward[:, None]], dim=2)
        self._t += 1
        self._previous = full
        self._current = self._stepper.prepare(full)
        observation = self._observe()
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        truncated = torch.full((self.num_envs,), self._t >= self.config.max_steps, device=self.device)
        if not bool(torch.isfinite(reward).all()):
            raise FloatingPointError(f"RecSim NG ({self.config.simulation}): NaN or inf reward at step {self._t}")
        position = torch.where(clicked, choice, -1)
        candidate = torch.where(clicked, slate_rows.gather(1, choice.clamp(max=self.slate_size - 1)[:, None])[:, 0], -1)
        infos: dict[str, Any] = {"clicked": clicked, "chosen_position": position, "chosen_candidate": candidate}
        if self.config.simulation == "interest_evolution":
            infos["consumed_time"] = reward
        if self.autoreset and self._t >= self.config.max_steps:
            infos["final_obs"] = observation
            infos["_final_obs"] = truncated
            self._start()
            observation = self._observe()
        return observation, reward, terminated, truncated, self._info(infos)

    # --- internals -------------------------------------------------------------------------------

    def _start(self) -> None:
        self._previous = None
        self._current = self._stepper.begin()
        self._response = torch.zeros(self.num_envs, self.slate_size, 2, device=self.device)
        self._t = 0

    def _observe(self) -> dict[str, torch.Tensor]:
        assert self._current is not None
        docs = self._current["available docs"]
        if self.config.simulation == "interest_evolution":
            table = torch.cat(
                [
                    _torch(docs["doc_features"], self.device),
                    _torch(docs["doc_quality"], self.device)[:, None],
                    _torch(docs["doc_length"], self.device)[:, None],
                ],
                dim=1,
            )
            observation = {}
        else:
            clicks = _torch(self._current["corpus state"]["provider_click_count"], self.device)
            provider = _torch(docs["provider_id"], self.device).to(torch.int64)
            table = torch.cat(
                [_torch(docs["doc_features"], self.device), torch.log1p(clicks[provider])[:, None]], dim=1
            )
            observation = {"user": _torch(self._current["user observation"]["user_interests"], self.device)}
        candidates = table.to(torch.float32)[None].expand(self.num_envs, *table.shape)
        return {"candidates": candidates, "response": self._response.clone(), **observation}

    def _info(self, infos: dict[str, Any]) -> dict[str, Any]:
        if self.ground_truth:
            assert self._current is not None
            state = self._current["user state"]
            key = "interest.state" if self.config.simulation == "interest_evolution" else "user_interests"
            infos["user_interest"] = _torch(state[key], self.device)
        return infos


class RecSimNGEnv(gym.Env):
    """One user of :class:`RecSimNGVectorEnv` as a ``gymnasium.Env`` (numpy observations); same arguments,
    less ``num_envs`` and ``device``. RecSim NG runs a batch of one: convenient, not fast."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self, config: Any = None, *, ground_truth: bool = True, render_mode: str | None = None, **overrides: Any
    ):
        self._vector = RecSimNGVectorEnv(
            1, config, ground_truth=ground_truth, autoreset=False, render_mode=render_mode, **overrides
        )
        self.config = self._vector.config
        self.observation_space = self._vector.single_observation_space
        self.action_space = self._vector.single_action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        observation, info = self._vector.reset(seed=seed, options=options)
        return self._one(observation), self._one(info)

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        check_slates(action, self._vector.num_candidates, self._vector.slate_size, None, False)
        observation, reward, terminated, truncated, info = self._vector.step(np.asarray(action).reshape(1, -1))
        return self._one(observation), float(reward[0]), bool(terminated[0]), bool(truncated[0]), self._one(info)

    @staticmethod
    def _one(values: dict[str, Any]) -> dict[str, Any]:
        return {k: (v[0].cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in values.items()}
