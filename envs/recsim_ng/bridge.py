"""The TensorFlow side of ``metarec/RecSimNG-v0``: RecSim NG networks with the agent's slate inside.

Only :mod:`metarec.envs.recsim_ng.env` imports this module, and only when such an environment is
built, so nothing else in metarec imports TensorFlow.

How a RecSim NG simulation is advanced one slate at a time
----------------------------------------------------------
RecSim NG builds a simulation as a ``Network`` of ``Variable``s (``recs_story``: corpus state,
available documents, user state, user observation, recommender state, slate, user response,
metrics). Its runtime evaluates every Variable once per step, in dependency order, and the
recommender is one of them. Here the recommender entity is :class:`AgentSlate`, whose slate is
the documents at the indices the agent wrote into a ``tf.Variable``.

The agent must see the step's available documents before it chooses, and in RecSim NG those are
computed in the same step as the slate. So each step is evaluated in two parts, exactly as
``Network.step`` would, split at the slate: first every Variable that does not depend on the
current slate (metrics, corpus, available documents, user state and observation, recommender
state); then the slate and everything downstream of it (the user's response). The initial step is
split the same way. Each part is one compiled ``tf.function``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from gym import spaces as gym_spaces  # RecSim NG's specs are gym 0.24 spaces
from recsim_ng.core import value as value_lib
from recsim_ng.core import variable as variable_lib
from recsim_ng.entities.recommendation import recommender as recommender_lib
from recsim_ng.lib.tensorflow import field_spec
from recsim_ng.stories import recommendation_simulation

Value = value_lib.Value
ValueSpec = value_lib.ValueSpec
Packed = dict[str, dict[str, tf.Tensor]]

SLATE = "slate docs"


class AgentSlate(recommender_lib.BaseRecommender):
    """A RecSim NG recommender entity whose slate is chosen outside the network.

    ``slate`` is a ``[num_users, slate_size]`` int32 ``tf.Variable`` of indices into the available
    documents; the slate Value has every field of the available documents, gathered at them.
    Its state counts the slates each user has been served.
    """

    def __init__(self, config: dict[str, Any], slate: tf.Variable, documents: ValueSpec) -> None:
        super().__init__(config, name="Recommender")
        self._slate = slate
        self._documents = documents

    def initial_state(self) -> Value:
        return Value(served=tf.zeros((self._num_users,), tf.float32))

    def next_state(self, previous_state: Value, user_response: Value, slate_docs: Value) -> Value:
        del user_response, slate_docs
        return Value(served=previous_state.get("served") + 1.0)

    def slate_docs(self, previous_state: Value, user_obs: Value, available_docs: Value) -> Value:
        del previous_state, user_obs
        indices = tf.identity(self._slate)
        return available_docs.map(lambda field: tf.gather(field, indices))

    def specs(self) -> ValueSpec:
        def per_slate(spec: field_spec.Space) -> field_spec.Space:
            tail = tuple(spec.space.shape[1:])  # a document field is [num_docs, ...]
            shape = (self._num_users, self._slate_size, *tail)
            return field_spec.Space(gym_spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32))

        state = ValueSpec(
            served=field_spec.Space(gym_spaces.Box(0.0, np.inf, shape=(self._num_users,), dtype=np.float32))
        ).prefixed_with("state")
        slate = ValueSpec(**{k: per_slate(s) for k, s in self._documents.as_dict.items()}).prefixed_with("slate")
        return state.union(slate)


@dataclass
class Story:
    """A RecSim NG simulation with the agent as its recommender: the network's Variables and entities."""

    variables: list[variable_lib.Variable]
    user: Any
    corpus: Any
    config: dict[str, Any]


def agent_story(
    config: dict[str, Any],
    user_ctor: Callable[[dict], Any],
    corpus_ctor: Callable[[dict], Any],
    metrics_ctor: Callable[[dict], Any],
    slate: tf.Variable,
) -> Story:
    """RecSim NG's own ``recs_story`` with :class:`AgentSlate` as the recommender."""
    built: dict[str, Any] = {}

    def keep(name: str, ctor: Callable[[dict], Any]) -> Callable[[dict], Any]:
        def make(cfg: dict) -> Any:
            built[name] = ctor(cfg)
            return built[name]

        return make

    def recommender(cfg: dict) -> AgentSlate:
        documents = built["corpus"].specs().get("available_docs")
        return AgentSlate(cfg, slate, documents)

    variables = recommendation_simulation.recs_story(
        config, keep("user", user_ctor), keep("corpus", corpus_ctor), recommender, metrics_ctor
    )
    return Story(list(variables), built["user"], built["corpus"], config)


def _downstream(variables: list[variable_lib.Variable], root: str, of: Callable[[Any], Any]) -> set[str]:
    """Names of ``root`` and every Variable depending on it through current-step dependencies."""
    reached = {root}
    grew = True
    while grew:
        grew = False
        for var in variables:
            if var.name not in reached and any(
                dep.on_current_value and dep.variable_name in reached for dep in of(var).dependencies
            ):
                reached.add(var.name)
                grew = True
    return reached


def _ordered(variables: list[variable_lib.Variable], of: Callable[[Any], Any]) -> list[variable_lib.Variable]:
    """``variables`` in an order where each comes after the Variables its current value depends on."""
    names = {var.name for var in variables}
    done: set[str] = set()
    order: list[variable_lib.Variable] = []
    while len(order) < len(variables):
        ready = [
            var
            for var in variables
            if var.name not in done
            and all(
                not dep.on_current_value or dep.variable_name in done or dep.variable_name not in names
                for dep in of(var).dependencies
            )
        ]
        if not ready:
            raise RuntimeError("RecSim NG network: a cycle among current-step dependencies")
        for var in ready:
            order.append(var)
            done.add(var.name)
    return order


def _pack(values: dict[str, Value]) -> Packed:
    return {name: {k: tf.convert_to_tensor(v) for k, v in value.as_dict.items()} for name, value in values.items()}


def _unpack(packed: Packed) -> dict[str, Value]:
    return {name: Value(**fields) for name, fields in packed.items()}


class Stepper:
    """Advances a :class:`Story`'s network one slate at a time (see the module docstring).

    ``begin()`` starts new users and returns the network values the agent may look at before its
    first slate; ``finish()`` plays the slate in :attr:`slate` and returns the rest of the step;
    ``prepare()`` starts the next step. All return packed values (dicts of tensors by Variable
    and field).
    """

    def __init__(self, story: Story, slate: tf.Variable) -> None:
        self.story = story
        self.slate = slate
        variables = story.variables

        def initial(var: variable_lib.Variable) -> Any:
            return var.initial_value

        def update(var: variable_lib.Variable) -> Any:
            return var.value

        first_b = _downstream(variables, SLATE, initial)
        then_b = _downstream(variables, SLATE, update)
        # Both halves must be current-step closed: the first half never reads the second.
        self._initial_a = [v for v in _ordered(variables, initial) if v.name not in first_b]
        self._initial_b = [v for v in _ordered(variables, initial) if v.name in first_b]
        self._step_a = [v for v in _ordered(variables, update) if v.name not in then_b]
        self._step_b = [v for v in _ordered(variables, update) if v.name in then_b]
        self.compile()

    def compile(self) -> None:
        """(Re)builds the compiled halves: after ``tf.random.set_seed`` their random streams restart."""
        self._begin = tf.function(self._begin_fn)
        self._finish_first = tf.function(self._finish_first_fn)
        self._prepare = tf.function(self._prepare_fn)
        self._finish = tf.function(self._finish_fn)

    @staticmethod
    def _evaluate(
        order: list[variable_lib.Variable],
        definition: Callable[[Any], Any],
        current: dict[str, Value],
        previous: dict[str, Value] | None,
    ) -> dict[str, Value]:
        computed: dict[str, Value] = {}
        for var in order:
            value_def = definition(var)
            args = []
            for dep in value_def.dependencies:
                if dep.on_current_value:
                    known = computed if dep.variable_name in computed else current
                    args.append(known[dep.variable_name])
                else:
                    assert previous is not None
                    args.append(previous[dep.variable_name])
            computed[var.name] = var.typecheck(value_def.fn(*args))
        return computed

    def _begin_fn(self) -> Packed:
        return _pack(self._evaluate(self._initial_a, lambda v: v.initial_value, {}, None))

    def _finish_first_fn(self, current: Packed) -> Packed:
        return _pack(self._evaluate(self._initial_b, lambda v: v.initial_value, _unpack(current), None))

    def _prepare_fn(self, previous: Packed) -> Packed:
        return _pack(self._evaluate(self._step_a, lambda v: v.value, {}, _unpack(previous)))

    def _finish_fn(self, previous: Packed, current: Packed) -> Packed:
        return _pack(self._evaluate(self._step_b, lambda v: v.value, _unpack(current), _unpack(previous)))

    def begin(self) -> Packed:
        return self._begin()

    def finish(self, previous: Packed | None, current: Packed) -> Packed:
        """The slate half of a step; ``previous`` is None for the first step of new users."""
        rest = self._finish_first(current) if previous is None else self._finish(previous, current)
        return {**current, **rest}

    def prepare(self, previous: Packed) -> Packed:
        return self._prepare(previous)


@contextlib.contextmanager
def numpy_seeded(seed: int) -> Iterator[None]:
    """Runs a block with NumPy's global generator seeded (RecSim NG draws its provider clusters
    from it), then restores the global state."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


# --- the simulations -----------------------------------------------------------------------------


def interest_evolution(num_users: int, options: dict[str, Any], slate: tf.Variable) -> Story:
    """``recsys_partially_observable_rl``: ``InterestEvolutionUser``, a frozen
    ``CorpusWithTopicAndQuality`` (or the given documents in a ``StaticCorpus``) and
    ``ConsumedTimeAsRewardMetrics``; the configuration of
    ``simulation_config.create_interest_evolution_simulation_network``."""
    from recsim_ng.applications.recsys_partially_observable_rl import corpus, metrics, user

    config = {
        "num_users": num_users,
        "num_topics": options["num_topics"],
        "num_docs": options["num_docs"],
        "slate_size": options["slate_size"],
        "history_length": 15,
    }
    documents = options.get("documents")
    if documents is None:

        def corpus_ctor(cfg: dict) -> Any:
            return corpus.StaticCorpus(cfg, corpus.CorpusWithTopicAndQuality(cfg).initial_state())

    else:
        fixed = Value(
            doc_id=tf.range(1, options["num_docs"] + 1, dtype=tf.int32),
            doc_topic=tf.constant(documents["topic"], tf.int32),
            doc_quality=tf.constant(documents["quality"], tf.float32),
            doc_features=tf.constant(documents["features"], tf.float32),
            doc_length=tf.constant(documents["length"], tf.float32),
        )

        def corpus_ctor(cfg: dict) -> Any:
            return corpus.StaticCorpus(cfg, fixed)

    return agent_story(config, user.InterestEvolutionUser, corpus_ctor, metrics.ConsumedTimeAsRewardMetrics, slate)


def ecosystem(num_users: int, options: dict[str, Any], slate: tf.Variable) -> Story:
    """``ecosystem_simulation``: ``ClusteredNormalUserCoreDispersion`` users, ``ViableCorpus``
    (5 documents per provider, drawn anew each step from providers weighted by their discounted
    clicks) and ``UtilityAsRewardMetrics``; the configuration of
    ``create_viable_provider_simulation_network`` and of its demo's provider clusters."""
    from recsim_ng.applications.ecosystem_simulation import corpus, metrics, user

    with numpy_seeded(options["provider_seed"]):
        provider_means = user.init_random_provider_clusters(
            provider_disp=options["provider_disp"],
            provider_fan_out=options["provider_fan_out"],
            num_provider_clusters=options["num_provider_clusters"],
            num_topics=options["num_topics"],
        )
    num_providers = provider_means.shape[0]
    config = {
        "num_topics": options["num_topics"],
        "num_users": num_users,
        "num_docs": num_providers * 5,
        "slate_size": options["slate_size"],
        "num_providers": num_providers,
        "provider_means": provider_means,
        "provider_boost_cap": 1.2,
    }
    return agent_story(
        config, user.ClusteredNormalUserCoreDispersion, corpus.ViableCorpus, metrics.UtilityAsRewardMetrics, slate
    )


def ecosystem_utility(story: Story) -> Callable[[Packed], tf.Tensor]:
    """The utility each user draws from this step's choice, by RecSim NG's own user entity.

    ``UtilityAsRewardMetrics`` reads the utility from the user state of the *next* step (the
    user's ``next_state`` draws it from the response); the agent needs it now, so the same
    entity method is called on this step's response. The network draws its own copy when it
    next steps; only its metrics read that one.
    """

    @tf.function
    def utility(current: Packed) -> tf.Tensor:
        values = _unpack(current)
        state = story.user.next_state(values["user state"], values["user response"], values[SLATE])
        return tf.convert_to_tensor(state.get("utilities"))

    return utility
