"""The step's fast paths give what the plain computation gives, bit for bit: the myopic oracle's revenue order
shared by every user where a model knows it in advance, the order key built from float32 maxima, and the
affinities computed in cache-sized blocks of users, the choice models computed in place, and choice weights computed
only for the columns a step reads. The batched spaces hold one row of bounds, not one per user."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector.utils import batch_space

import metarec  # noqa: F401
from metarec.envs.core import backend as backend_module
from metarec.envs.core.backend import numpy_backend, torch_backend
from metarec.envs.core.choice import assortment_in_order, revenue_order, shared_revenue_order, shown_mask
from metarec.envs.task_batch import TaskBatchVectorEnv


def plain_order(weights, revenue, k, backend=None):
    """The revenue order as first written: the key's maxima taken over float64 copies, then the backend's
    top-k (numpy's stable sort by default; torch may break exact ties of the key otherwise)."""
    r64, w64 = revenue.astype(np.float64), weights.astype(np.float64)
    scale = 1e-9 * (np.max(np.abs(r64), axis=1, keepdims=True) + 1e-30)
    key = r64 + scale * w64 / (np.max(w64, axis=1, keepdims=True) + 1e-30)
    backend = backend or numpy_backend()
    return backend.to_numpy(backend.top_k(backend.asarray(key), k))


@pytest.mark.parametrize("backend", [numpy_backend(), torch_backend()], ids=["numpy", "torch"])
def test_the_order_key_from_float32_maxima_is_the_plain_one(backend):
    rng = np.random.default_rng(0)
    for _ in range(50):
        b, n, k = 64, int(rng.integers(2, 40)), 0
        k = int(rng.integers(1, n + 1))
        revenue = (rng.standard_normal((b, n)) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
        revenue[:, : n // 3] = revenue[:, :1]  # equal revenues, which only the weights separate
        weights = rng.gamma(0.5, 1.0, (b, n)).astype(np.float32)
        weights[::7] = 0.0
        got = backend.to_numpy(revenue_order(backend, backend.asarray(weights), backend.asarray(revenue), k))
        np.testing.assert_array_equal(got, plain_order(weights, revenue, k, backend))


def test_a_shared_order_is_every_users_order_whatever_their_weights():
    rng = np.random.default_rng(1)
    revenue = rng.uniform(0.2, 3.0, 100).astype(np.float32)
    order = shared_revenue_order(revenue, 4)
    assert order is not None and order.tolist() == np.argsort(-revenue)[:4].tolist()
    weights = np.concatenate(
        [
            rng.gamma(0.3, 1.0, (500, 100)),
            np.zeros((1, 100)),
            np.full((1, 100), 3e38),
            np.eye(100)[:50] * 1e30,  # one candidate outweighing every other
        ]
    ).astype(np.float32)
    rows = np.broadcast_to(revenue, weights.shape)
    np.testing.assert_array_equal(plain_order(weights, rows, 4), np.broadcast_to(order, (weights.shape[0], 4)))


def test_revenues_the_weights_can_reorder_get_no_shared_order():
    # 1e-3 and its float32 neighbour are 1.2e-10 apart, closer than the weight term's 1e-9 of the top revenue
    close = np.array([1.0, 1e-3, np.nextafter(np.float32(1e-3), np.float32(1.0)), 0.5], dtype=np.float32)
    assert shared_revenue_order(close, 3) is None
    favour_1 = np.array([[1, 1, 0, 1]], np.float32)
    favour_2 = np.array([[1, 0, 1, 1]], np.float32)
    assert plain_order(favour_1, close[None], 4).tolist() == [[0, 3, 1, 2]]
    assert plain_order(favour_2, close[None], 4).tolist() == [[0, 3, 2, 1]]
    assert shared_revenue_order(np.array([2.0, 1.0, 1.0], np.float32), 2) is None  # a tie at the cut
    assert shared_revenue_order(np.array([2.0, 1.0, 1.0], np.float32), 1) is not None  # the tie is below it
    assert shared_revenue_order(np.array([2.0, np.nan, 1.0], np.float32), 1) is None


def test_the_shared_order_gives_the_per_user_slates_and_values():
    be = torch_backend()
    rng = np.random.default_rng(2)
    revenue = rng.uniform(0.2, 3.0, 30).astype(np.float32)
    weights = torch.as_tensor(rng.gamma(0.5, 1.0, (256, 30)).astype(np.float32))
    rows = be.broadcast_rows(torch.as_tensor(revenue), 256)
    position = torch.tensor([1.0, 0.8, 0.6])
    shared = assortment_in_order(be, torch.as_tensor(shared_revenue_order(revenue, 3)), weights, rows, 2.0, position)
    per_user = assortment_in_order(be, revenue_order(be, weights, rows, 3), weights, rows, 2.0, position)
    assert torch.equal(shared[0], per_user[0]) and torch.equal(shared[1], per_user[1])


def ng_trajectory(users, oracle_order_off, **config):
    env = gym.make_vec(
        "metarec/RecSimNGInterestEvolution-v0",
        num_envs=users,
        vectorization_mode="vector_entry_point",
        array_backend="torch",
        **config,
    )
    if oracle_order_off:
        env.unwrapped.model.oracle_order = None
    g = torch.Generator().manual_seed(3)
    _, info = env.reset(seed=5)
    out = []
    for t in range(40):
        k = env.unwrapped.model.slate_size
        action = info["oracle_slate"] if t % 2 else torch.randint(100, (users, k), generator=g)
        obs, reward, _, _, info = env.step(action)
        out += [obs["response"], reward] + [info[key] for key in ("oracle_slate", "oracle_value", "regret")]
    return out


@pytest.mark.parametrize("config", [{}, {"slate_size": 5, "no_click_mass": 1.0}], ids=["default", "slate-5"])
def test_the_recsim_ng_port_knows_its_oracle_order_and_nothing_moves(config):
    env = gym.make_vec(
        "metarec/RecSimNGInterestEvolution-v0", num_envs=2, vectorization_mode="vector_entry_point", **config
    )
    assert env.unwrapped.model.oracle_order is not None
    fast, plain = ng_trajectory(300, False, **config), ng_trajectory(300, True, **config)
    assert all(torch.equal(a, b) for a, b in zip(fast, plain, strict=True))


@pytest.mark.parametrize("block", [1 << 10, 1 << 13, 1 << 30], ids=["small-blocks", "blocks", "one-block"])
def test_affinities_in_blocks_of_users_are_the_plain_ones(block, monkeypatch):
    monkeypatch.setattr(backend_module, "ROW_BLOCK_ELEMENTS", block)
    g = torch.Generator().manual_seed(4)
    table, vectors = torch.randn(300, 16, generator=g), torch.randn(5003, 16, generator=g)
    index = torch.randint(300, (5003, 20), generator=g)
    plain = (table[index] * vectors[:, None, :]).sum(dim=2)
    assert torch.equal(torch_backend().row_dots(table, index, vectors), plain)
    numpy = numpy_backend().row_dots(table.numpy(), index.numpy(), vectors.numpy())
    np.testing.assert_array_equal(numpy, (table.numpy()[index.numpy()] * vectors.numpy()[:, None, :]).sum(axis=2))


def test_blocked_affinities_leave_the_flagship_trajectories_alone(monkeypatch):
    def trajectory():
        env = gym.make_vec(
            "metarec/DriftingUsers-v0", num_envs=700, vectorization_mode="vector_entry_point", array_backend="torch"
        )
        _, info = env.reset(seed=2)
        g = torch.Generator().manual_seed(1)
        out = []
        for _ in range(15):
            obs, reward, _, _, info = env.step(torch.rand(700, 20, generator=g).argsort(1)[:, :5])
            out += [obs["history"], reward, info["candidate_utilities"], info["oracle_slate"], info["regret"]]
        return out

    monkeypatch.setattr(backend_module, "ROW_BLOCK_ELEMENTS", 1 << 30)
    plain = trajectory()
    monkeypatch.setattr(backend_module, "ROW_BLOCK_ELEMENTS", 4096)  # 700 users x 20 x 16: 59 blocks
    assert all(torch.equal(a, b) for a, b in zip(trajectory(), plain, strict=True))


@pytest.mark.parametrize("env_id", ["metarec/DriftingUsers-v0", "metarec/RecSimNGInterestEvolution-v0"])
def test_batched_spaces_hold_one_row_of_bounds(env_id):
    env = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point").unwrapped
    assert env.observation_space == batch_space(env.single_observation_space, 3)
    assert env.action_space == batch_space(env.single_action_space, 3)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains({key: value.numpy() for key, value in obs.items()})
    assert env.observation_space.contains(env.observation_space.sample())
    big = gym.make_vec(env_id, num_envs=1_000_000, vectorization_mode="vector_entry_point").unwrapped
    boxes = [*big.observation_space.spaces.values(), big.action_space]
    held = sum(np.asarray(b.low).base.nbytes + np.asarray(b.high).base.nbytes for b in boxes)
    assert held < 100_000  # a row's bounds (a million copies: gigabytes)
    assert all(b.shape[0] == 1_000_000 for b in boxes)


def test_the_order_in_blocks_of_users_is_the_whole_batchs(monkeypatch):
    g = torch.Generator().manual_seed(6)
    weights, revenue = torch.rand(3001, 20, generator=g), torch.rand(3001, 20, generator=g) - 0.3
    revenue[::5, :4] = 0.5  # ties for the weights to break
    whole = revenue_order(torch_backend(), weights, revenue, 5)
    monkeypatch.setattr(backend_module, "ROW_BLOCK_ELEMENTS", 1000)  # 50 users a block
    assert len(torch_backend().row_blocks(3001, 20)) == 61
    assert torch.equal(revenue_order(torch_backend(), weights, revenue, 5), whole)


def plain_drifting_truth(model, state):
    """DriftingUsers' choice model as first written, one out-of-place expression per quantity."""
    be, w, p = model.backend, model.world, model.params(state)
    xp, items = model.xp, state["candidates"]
    col = lambda v: v[:, None] if getattr(v, "ndim", 0) == 1 else v  # noqa: E731
    affinity = be.row_dots(w["item_embedding"], items, state["interest"])
    fatigue = be.take_along(state["fatigue"], be.take_rows(w["item_topic"], items))
    quality = be.take_rows(w["item_quality"], items)
    utility = affinity + col(p.quality_weight) * quality - col(p.fatigue_weight) * fatigue
    attraction = utility + be.take_rows(w["item_appeal"], items) if model.has_appeal else utility
    weights = xp.exp(xp.minimum(attraction / col(p.choice_temperature), 60.0))
    revenue = be.take_rows(w["item_length"], items) / (1.0 + xp.exp(-utility * col(p.revenue_scale)))
    return weights, revenue, utility


@pytest.mark.parametrize(
    "make",
    [
        lambda: gym.make_vec("metarec/DriftingUsers-v0", num_envs=400, vectorization_mode="vector_entry_point",
                             array_backend="torch", catalog={"appeal_std": 0.5}),
        lambda: TaskBatchVectorEnv([{}, {"population": {"choice_temperature": 0.3, "fatigue_weight": 2.0}}], 200),
    ],
    ids=["appeal", "task-batch"],
)  # fmt: skip
def test_the_in_place_drifting_choice_model_is_the_plain_one(make):
    env = make()
    env.reset(seed=6)
    g = torch.Generator().manual_seed(6)
    for _ in range(12):  # fatigue and drift away from the first state
        env.step(torch.rand(400, 20, generator=g).argsort(1)[:, :5])
    model, state = env.unwrapped.model, env.unwrapped.state
    state = {**state, "interest": state["interest"] * 200.0}  # large utilities: the 60 cap and saturated revenues
    truth = model.choice_model(state)
    fast = (truth.weights, truth.revenue, truth.utilities)
    assert all(torch.equal(a, b) for a, b in zip(fast, plain_drifting_truth(model, state), strict=True))
    assert (truth.weights == torch.exp(torch.tensor(60.0))).any()  # the cap was reached


@pytest.mark.parametrize("topics", [2, 3])
def test_the_in_place_port_choice_model_is_the_plain_one_and_its_weights_are_lazy(topics):
    env = gym.make_vec("metarec/RecSimNGInterestEvolution-v0", num_envs=300, vectorization_mode="vector_entry_point",
                       array_backend="torch", num_topics=topics)  # fmt: skip
    env.reset(seed=8)
    model, state = env.unwrapped.model, env.unwrapped.state
    u, f = state["interest"], model.doc_features
    squared = (u * u).sum(1)[:, None] - 2.0 * (u @ f.T) + (f * f).sum(1)[None, :]
    affinity = -torch.sqrt(torch.maximum(squared, torch.tensor(0.0)))
    truth = model.choice_model(state)
    assert truth._weights is None  # computed where read
    slate = torch.randint(100, (300, 2), generator=torch.Generator().manual_seed(8))
    on_slate = truth.columns(model.backend, slate)
    assert truth._weights is None
    weights = torch.exp(affinity + model.config.logit_offset)
    assert torch.equal(truth.utilities, affinity)
    assert torch.equal(on_slate.weights, weights.gather(1, slate))
    assert torch.equal(on_slate.utilities, affinity.gather(1, slate))
    assert torch.equal(truth.weights, weights)  # and all of them, when read
    shared = truth.columns(model.backend, model.oracle_order)  # [K] columns, the same for every user
    assert torch.equal(shared.weights, weights[:, model.oracle_order])


@pytest.mark.parametrize("backend", [numpy_backend(), torch_backend()], ids=["numpy", "torch"])
@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_the_shown_mask_of_a_large_batch_is_the_pairwise_one(backend, k):
    # 600 users take the pass per position; blocks of 100 the [B, K, K] comparison
    slate = backend.asarray(np.random.default_rng(k).integers(0, 4, size=(600, k)))  # many repeats
    whole = backend.to_numpy(shown_mask(backend.xp, slate))
    blocks = np.concatenate([backend.to_numpy(shown_mask(backend.xp, slate[i : i + 100])) for i in range(0, 600, 100)])
    np.testing.assert_array_equal(whole, blocks)
    first = backend.to_numpy(slate)
    expected = [[row[j] not in row[:j] for j in range(k)] for row in first.tolist()]
    np.testing.assert_array_equal(whole, np.array(expected))


def test_the_clicked_mask_by_scatter_is_the_compared_one():
    from metarec.envs.core.model import Choice

    g = torch.Generator().manual_seed(3)
    slate = torch.randint(0, 9, (500, 4), generator=g)
    position = torch.randint(0, 4, (500,), generator=g)
    clicked = torch.rand(500, generator=g) < 0.6
    chosen = slate.gather(1, position[:, None])[:, 0]
    mask = Choice(slate, position, chosen, clicked).clicked_mask(torch_backend().xp)  # torch: by scatter
    numpy = Choice(slate.numpy(), position.numpy(), chosen.numpy(), clicked.numpy()).clicked_mask(np)
    assert mask.dtype == torch.float32 and numpy.dtype == np.float32
    np.testing.assert_array_equal(mask.numpy(), numpy)
    assert mask.sum() == clicked.sum() and (mask.sum(1) == clicked.float()).all()


@pytest.mark.parametrize("backend", [numpy_backend(), torch_backend()], ids=["numpy", "torch"])
def test_row_argmax_is_argmax_with_its_value_nan_and_ties_included(backend):
    values = np.random.default_rng(5).integers(0, 3, size=(400, 5)).astype(np.float32)  # many ties
    values[::7, 2] = np.nan
    values[::11, 4] = np.inf
    index, largest = backend.row_argmax(backend.asarray(values))
    expected = np.argmax(values, axis=1)  # the first largest, a NaN counting as the largest
    np.testing.assert_array_equal(backend.to_numpy(index), expected)
    np.testing.assert_array_equal(backend.to_numpy(largest), values[np.arange(400), expected])


def test_a_truth_handed_to_a_step_keeps_its_utilities_and_says_what_it_released():
    env = gym.make_vec("metarec/RecSimNGInterestEvolution-v0", num_envs=50, vectorization_mode="vector_entry_point",
                       array_backend="torch")  # fmt: skip
    env.reset(seed=2)
    model, state = env.unwrapped.model, env.unwrapped.state
    _, _, truth = model.oracle(state)
    utilities = truth.utilities.clone()
    model.step(env.unwrapped._rng, state, torch.zeros((50, 2), dtype=torch.int64) + torch.arange(2), truth)
    assert torch.equal(truth.utilities, utilities)
    for attribute in ("weights", "revenue"):
        with pytest.raises(ValueError, match=rf"truth\.{attribute}: released by the UserModel\.step it was passed to"):
            getattr(truth, attribute)
