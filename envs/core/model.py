"""The functional core: pure batched user dynamics that every environment adapts.

A :class:`UserModel` holds a simulator family's fixed parameters (a user population and its
catalog: what defines a task) on one array backend; the state of ``B`` users is a plain ``dict`` of
arrays whose first dimension is ``B`` (what changes each step). One step of the simulation, after
RecSim NG's ordering:

1. the recommender shows a slate (the agent's action; repeats are shown once);
2. the user chooses one shown item or nothing, from the model's choice weights;
3. the user responds (engagement) and the reward is read off the response;
4. the user's state evolves (budget, fatigue, interests and their drift);
5. new candidates are drawn for the next decision.

Steps 1-2 and the ground truth (expected value of the shown slate, the myopic oracle) are shared
here; a model supplies :meth:`UserModel.choice_model` and :meth:`UserModel.respond`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import numpy as np
from gymnasium import spaces

from metarec.envs.core.backend import Array, Backend, Random
from metarec.envs.core.choice import (
    assortment_of_ordered,
    choice_probabilities,
    per_user_rows,
    positions_like,
    revenue_order,
    sample_categorical,
    shown_mask,
)

State = dict[str, Array]


_RELEASED = (
    "truth.{}: released by the UserModel.step it was passed to (a step reads the slate's columns and lets go of the "
    "rest); only its utilities stay, so compute choice_model(state) again for more"
)


class ChoiceModel:
    """What a user would do with any candidate, in the current state (ground truth).

    Attributes:
        weights: ``[B, N]`` choice weight of each candidate at an unbiased position.
        revenue: ``[B, N]`` expected reward if the candidate is chosen.
        no_click_weight: ``[B]`` (or scalar) weight of choosing nothing.
        position_weight: ``[K]`` (or per user ``[B, K]``) multiplicative position bias.
        utilities: ``[B, N]`` the user's true utility of each candidate (reported in ``info``).

    A model may pass ``weights=None`` and ``weight_of``, an elementwise function of the utilities that gives the
    weights: they are then computed when first read, and :meth:`columns` applies the function to the columns it
    takes only. A step reads a few columns of the whole candidate set's ground truth (the slate shown, the
    oracle's order where every user shares it), so a model whose weights are an elementwise function of its
    utilities computes them for those columns, not for every candidate (the same numbers, bit for bit).
    """

    __slots__ = ("_revenue", "_weights", "no_click_weight", "position_weight", "utilities", "weight_of")

    def __init__(
        self, weights: Array | None, revenue: Array, no_click_weight: Array, position_weight: Array,
        utilities: Array, weight_of: Callable[[Array], Array] | None = None,
    ) -> None:  # fmt: skip
        if weights is None and weight_of is None:
            raise ValueError("weights: expected an array, or weight_of to compute them from the utilities")
        self._weights = weights
        self._revenue = revenue
        self.no_click_weight = no_click_weight
        self.position_weight = position_weight
        self.utilities = utilities
        self.weight_of = weight_of

    @property
    def weights(self) -> Array:
        if self._weights is None:
            if self.weight_of is None:
                raise ValueError(_RELEASED.format("weights"))
            self._weights = self.weight_of(self.utilities)
        return self._weights

    @property
    def revenue(self) -> Array:
        if self._revenue is None:
            raise ValueError(_RELEASED.format("revenue"))
        return self._revenue

    def release(self) -> None:
        """Lets go of the weights and revenues of every candidate, once what was needed of them was read (a step
        reads the slate's columns): at a million users they are hundreds of MB. The utilities stay."""
        self._weights = None
        self._revenue = None
        self.weight_of = None

    def columns(self, backend: Backend, index: Array) -> ChoiceModel:
        """The ground truth of candidates ``index`` (``[B, J]``, or ``[J]`` the same for every user): ``[B, J]``
        weights, revenues and utilities."""
        take = backend.take_columns if index.ndim == 1 else backend.take_along
        utilities = take(self.utilities, index)
        weights = self.weight_of(utilities) if self._weights is None and self.weight_of else take(self.weights, index)
        return ChoiceModel(weights, take(self.revenue, index), self.no_click_weight, self.position_weight, utilities)


@dataclass(frozen=True)
class Choice:
    """What the user did with the slate (step 2).

    Attributes:
        slate: ``[B, K]`` the candidate indices shown.
        position: ``[B]`` slate position of the chosen item (meaningful where ``clicked``).
        candidate: ``[B]`` candidate index of the chosen item (meaningful where ``clicked``).
        clicked: ``[B]`` bool, False where the user chose nothing.
    """

    slate: Array
    position: Array
    candidate: Array
    clicked: Array

    def clicked_mask(self, xp: Any) -> Array:
        """``[B, K]`` float32: 1 at the slate position the user chose, 0 elsewhere (and for no click)."""
        if hasattr(self.slate, "scatter_"):  # torch: one write a row, several times faster than comparing [B, K]
            mask = xp.zeros(self.slate.shape, dtype=xp.float32, device=self.slate.device)
            return mask.scatter_(1, self.position[:, None], xp.astype(self.clicked, xp.float32)[:, None])
        positions = positions_like(xp, self.slate.shape[1], self.slate)
        return xp.astype((positions[None, :] == self.position[:, None]) & self.clicked[:, None], xp.float32)


@dataclass(frozen=True)
class Outcome:
    """What :meth:`UserModel.respond` returns besides the new state."""

    reward: Array  # [B] float32
    terminated: Array  # [B] bool: the user left (budget spent, churned)
    truncated: Array  # [B] bool: a step limit cut the episode
    info: dict[str, Array]  # extra per-user ground truth, e.g. drift events


class OneUserStep(Protocol):
    """What a model may offer the single-user environment on numpy: its step, observation and oracle
    for one user, written with scalars instead of ``[1, ...]`` arrays (a batched step of one user is
    about 150 numpy calls of a microsecond each; this is a few dozen).

    It must give, bit for bit, what the batched methods give for a batch of one user: the same
    arithmetic in float32, the same random draws in the same order, the same state dict (``[1, ...]``
    arrays, so reset and the batched methods apply to it unchanged). A test checks that for every
    model that has one. ``truth`` is whatever :meth:`oracle` returned last for this state, or None.
    """

    def step(
        self, generator: np.random.Generator, state: State, slate: list[int], truth: Any
    ) -> tuple[State, float, bool, bool, dict[str, Any]]:
        """``(state, reward, terminated, truncated, info)`` after showing ``slate`` (validated
        candidate indices); ``info`` holds Python scalars, as :meth:`UserModel.step`'s ``.item()``."""

    def observe(self, state: State) -> dict[str, np.ndarray]:
        """The observation of the user, as fresh arrays without the batch dimension."""

    def oracle(self, state: State) -> tuple[np.ndarray, float, np.ndarray, Any]:
        """``(slate [K], value, candidate utilities [N], truth)``, as :meth:`UserModel.oracle`."""


class UserModel(ABC):
    """Batched dynamics of one simulator family on one backend.

    Subclasses set ``num_candidates``, ``slate_size`` and ``position_weight`` and implement the
    abstract methods. Nothing here loops over users.
    """

    backend: Backend
    num_candidates: int
    slate_size: int
    guarded_keys: tuple[str, ...] = ()  # float state the NaN guard checks each step (metarec.envs.core.finite)
    #: The oracle's revenue order ``[K]``, where it is the same for every user and known in advance (see
    #: :func:`~metarec.envs.core.choice.shared_revenue_order`); None: the oracle orders each user's candidates.
    oracle_order: Array | None = None

    @property
    def xp(self) -> Any:
        return self.backend.xp

    @cached_property
    def neutral_positions(self) -> bool:
        """Whether every position weighs 1 (no position bias), so that a step need not multiply by the weights:
        read once from the model's ``position_weight``, where it has one that every user shares."""
        weight = getattr(self, "position_weight", None)
        return weight is not None and bool(np.all(self.backend.to_numpy(weight) == 1.0))

    # -- what a model defines ---------------------------------------------------------------
    @abstractmethod
    def initial_state(self, rng: Random, num_users: int) -> State:
        """Fresh users with their first candidates."""

    @abstractmethod
    def choice_model(self, state: State, columns: Array | None = None) -> ChoiceModel:
        """Choice weights and expected rewards of the current candidates (``[B, N]``), or only of the
        candidates ``columns`` (``[B, J]`` candidate indices) — what a step needs when no one asked
        for the whole ground truth."""

    @abstractmethod
    def respond(self, rng: Random, state: State, on_slate: ChoiceModel, choice: Choice) -> tuple[State, Outcome]:
        """Steps 3-5: the response to the user's choice and the state that follows, with the next
        candidates drawn. ``on_slate`` is the choice model of the slate's positions (``[B, K]``) that
        the choice was drawn from."""

    @abstractmethod
    def observe(self, state: State) -> dict[str, Array]:
        """The agent's observation of each user: ``{name: [B, ...]}``; never the hidden state."""

    @abstractmethod
    def observation_space(self) -> spaces.Dict:
        """The observation space of one user."""

    # -- shared -----------------------------------------------------------------------------
    def step(self, rng: Random, state: State, slate: Array, truth: ChoiceModel | None = None) -> tuple[State, Outcome]:
        """Advances every user one step with the given slates (``[B, K]`` int64, already validated).

        ``truth`` may pass in ``choice_model(state)`` when the caller already has it (the adapters
        computed it for the oracle), so it is not computed twice. The step reads the slate's columns of it and then
        releases its weights and revenues (:meth:`ChoiceModel.release`); its utilities stay.
        """
        xp, be = self.xp, self.backend
        # the ground truth of the K shown candidates only
        on_slate = self.choice_model(state, slate) if truth is None else truth.columns(be, slate)
        if truth is not None:
            truth.release()
        shown = xp.astype(shown_mask(xp, slate), on_slate.weights.dtype)  # [B, K]
        weights = on_slate.weights
        if not self.neutral_positions:
            weights = weights * per_user_rows(on_slate.position_weight)
        weights = weights * shown
        probs = choice_probabilities(xp, weights, on_slate.no_click_weight)  # [B, K + 1]
        choice = sample_categorical(xp, rng, probs)  # [B], K means no click
        clicked = choice < self.slate_size
        position = xp.minimum(choice, self.slate_size - 1)
        chosen = be.take_along(slate, position[:, None])[:, 0]  # candidate index
        expected = xp.sum(probs[:, : self.slate_size] * on_slate.revenue, axis=1)
        state, outcome = self.respond(rng, state, on_slate, Choice(slate, position, chosen, clicked))
        info = {
            "clicked": clicked,
            "chosen_position": xp.where(clicked, position, -1),
            "chosen_candidate": xp.where(clicked, chosen, -1),
            "expected_reward": expected,
            **outcome.info,
        }
        return state, Outcome(outcome.reward, outcome.terminated, outcome.truncated, info)

    def oracle(self, state: State) -> tuple[Array, Array, ChoiceModel]:
        """The myopic oracle's slate ``[B, K]`` for the current candidates, its expected reward ``[B]``
        and the ground truth it was computed from."""
        be, truth = self.backend, self.choice_model(state)
        # where every user's order is known, only its K columns of the ground truth are read
        order = self.oracle_order
        if order is None:
            order = revenue_order(be, truth.weights, truth.revenue, self.slate_size)
        ordered = truth.columns(be, order)
        if order.ndim == 1:
            order = be.broadcast_rows(order, truth.utilities.shape[0])
        position = None if self.neutral_positions else truth.position_weight
        slate, value = assortment_of_ordered(
            be, order, ordered.weights, ordered.revenue, truth.no_click_weight, position
        )
        return slate, value, truth

    def reset_users(self, rng: Random, state: State, done: Array, in_place: Collection[str] = ()) -> State:
        """Replaces the users where ``done`` (``[B]`` bool) by fresh ones; the others are untouched. The arrays of
        the keys ``in_place`` (ones the caller made and nothing else holds) take the newcomers in place; the
        others are copied first, so ``state`` itself is left as it was."""
        index = self.xp.nonzero(done)[0]
        if index.shape[0] == 0:
            return state
        fresh = self.fresh_users(rng, state, index)
        merged = {}
        for key, value in state.items():
            if key not in in_place:
                value = value.copy() if self.backend.name == "numpy" else value.clone()
            value[index] = fresh[key]
            merged[key] = value
        return merged

    def one_user(self) -> OneUserStep | None:
        """A fused step for one user on numpy, or None (the default): see :class:`OneUserStep`."""
        return None

    def fresh_users(self, rng: Random, state: State, index: Array) -> State:
        """New users for rows ``index`` of ``state`` (a model whose rows differ, e.g. by task, draws
        each new user like the one it replaces)."""
        return self.initial_state(rng, int(index.shape[0]))

    def state_nbytes(self, state: State) -> int:
        """Bytes held by the state of all users (divide by B for bytes per user)."""
        total = 0
        for value in state.values():
            total += int(value.nbytes) if self.backend.name == "numpy" else value.element_size() * value.nelement()
        return total


def push_history(xp: Any, history: Array, row: Array) -> Array:
    """Appends ``row`` (``[B, ...]``) to the newest end of ``history`` (``[B, H, ...]``), dropping the oldest."""
    return xp.concat([history[:, 1:], row[:, None]], axis=1)
