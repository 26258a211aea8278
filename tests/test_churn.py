"""Catalog churn: items arrive at the configured rate from the catalog's prior, ids start afresh everywhere,
and with churn at zero every trajectory is the one metarec gave before churn existed."""

import hashlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from scipy import stats

import metarec  # noqa: F401
from metarec.agents.base import arrived_items
from metarec.agents.baselines.bandits import GreedyRecommender
from metarec.agents.baselines.hbayes import HierarchicalBayesRecommender
from metarec.agents.baselines.popularity import PopularRecommender
from metarec.agents.cold_start import ItemColdStart, summarise
from metarec.config import load_yaml_config
from metarec.envs.core.backend import torch_backend
from metarec.envs.drifting.churn import CatalogTimeline, arrivals, initial_birth
from metarec.envs.drifting.model import DriftingUsersModel, make_world
from metarec.envs.drifting.params import SimulatorConfig
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.evaluate import EvalConfig, LoggedItemStats, adaptation_curves
from metarec.meta.tasks import TaskDistribution

# -- with churn at zero, nothing moved ------------------------------------------------------------------------------
# Digests of seeded trajectories recorded with the code before catalog churn existed, on the two kinds of CPU the
# tests run on: torch's CPU kernels round differently on an AMD EPYC (AVX2) and an Intel Xeon (AVX-512), so a
# trajectory is bit-identical per kind of machine. The NumPy single-user env gives one digest on both.
FIXED_CATALOG_DIGESTS = {
    "vector": (
        "d5637ebbc9102a3c147d7141a992ae950e7dde00e7d397afce1dca863c7f4564",  # AMD EPYC
        "75a72fa41882e8c6fc8a70b82a13ae4fe7e5be0896c5f12d819cbf0c6b0b77eb",  # Intel Xeon, AVX-512
    ),
    "vector-sessions": (
        "4f5edacb5b8c684f7e94cc53200bb31019b427fd626fb69f2126bc989ab5bd3e",
        "232305db8d64bcf776fbc884703bbc37570c7f7eda0c76ca2813ac7b77c012de",
    ),
    "vector-small-catalog": (
        "6822a4c6b0a78ae28ac62f355f33cf9ab26cb7c71b9d6a70c96c513d4d7ec885",
        "66cdb4ddaa9a94504d1fb84845bbbea1b7bef944a9f8b13bbea9ed50d7e0491b",
    ),
    "single": ("4abfd7b3cd9c3101af82aa44df925e32e782a011219f6875b140b06150f65a1f",),
    "task-batch": (
        "235ad827a21bc7a9f1add1f9ad21c2171316a03aed5975cf10f3a5fdb471efd9",
        "59a55f8319c2012dba14eb1ffad24f98400427425af4957c5b080823b712016b",
    ),
}
OBSERVED = ("candidates", "candidate_ids", "history")
INFO = ("clicked", "chosen_position", "engagement", "satisfaction", "regret", "oracle_slate", "oracle_value")


def vector_digest(steps=120, users=32, **kwargs):
    env = gym.make_vec(
        "metarec/DriftingUsers-v0",
        num_envs=users,
        vectorization_mode="vector_entry_point",
        array_backend="torch",
        **kwargs,
    )
    digest = hashlib.sha256()
    env.reset(seed=11)
    g = torch.Generator().manual_seed(5)
    n, k = env.unwrapped.model.num_candidates, env.unwrapped.model.slate_size
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(torch.rand(users, n, generator=g).argsort(1)[:, :k])
        for value in [*(obs[key] for key in OBSERVED), reward, terminated, truncated, *(info[key] for key in INFO)]:
            digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def single_digest(steps=300):
    env = gym.make("metarec/DriftingUsers-v0")
    digest = hashlib.sha256()
    env.reset(seed=3)
    rng = np.random.default_rng(9)
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(rng.permutation(20)[:5])
        for key in OBSERVED:
            digest.update(obs[key].tobytes())
        digest.update(np.float64(reward).tobytes())
        if terminated or truncated:
            env.reset()
    return digest.hexdigest()


def task_batch_digest(steps=80):
    tasks = [
        {"catalog": {"seed": s, "num_items": 200 + 50 * s}, "population": {"choice_temperature": 0.3 + 0.1 * s}}
        for s in range(3)
    ]
    env = TaskBatchVectorEnv(tasks, 8, item_stats=True)
    digest = hashlib.sha256()
    env.reset(seed=2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        obs, reward, *_ = env.step(torch.rand(24, 20, generator=g).argsort(1)[:, :5])
        for value in [*(obs[key] for key in OBSERVED), reward]:
            digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def test_with_churn_at_zero_trajectories_are_bit_identical_to_before():
    seen = {
        "vector": vector_digest(),
        "vector-sessions": vector_digest(population={"num_sessions": 3}),
        "vector-small-catalog": vector_digest(steps=60, catalog={"num_items": 300}),
        "single": single_digest(),
        "task-batch": task_batch_digest(),
    }
    assert seen["vector"] in FIXED_CATALOG_DIGESTS["vector"], "the default vector env's trajectory moved"
    kind = FIXED_CATALOG_DIGESTS["vector"].index(seen["vector"])  # every digest from this kind of machine
    for key, digest in seen.items():
        recorded = FIXED_CATALOG_DIGESTS[key]
        assert digest == recorded[min(kind, len(recorded) - 1)], key


def test_observation_space_changes_only_with_churn_on():
    fixed = gym.make("metarec/DriftingUsers-v0")
    churning = gym.make("metarec/DriftingUsers-v0", catalog={"churn_rate": 1.0})
    assert set(fixed.observation_space.spaces) == {"candidates", "candidate_ids", "history"}
    assert set(churning.observation_space.spaces) == {"candidates", "candidate_ids", "history", "candidate_age"}
    check_env(churning.unwrapped, skip_render_check=True)
    _, info = fixed.reset(seed=0)
    _, _, _, _, info = fixed.step(fixed.action_space.sample())
    assert "item_arrived" not in info


# -- arrivals ------------------------------------------------------------------------------------------------------
def vector_env(users=4, churn=2.0, **kwargs):
    catalog = {"churn_rate": churn, "num_items": 400, **kwargs.pop("catalog", {})}
    return gym.make_vec(
        "metarec/DriftingUsers-v0",
        num_envs=users,
        vectorization_mode="vector_entry_point",
        array_backend="torch",
        catalog=catalog,
        **kwargs,
    ).unwrapped


def random_slates(env, generator):
    n, k = env.model.num_candidates, env.model.slate_size
    return torch.rand(env.num_envs, n, generator=generator).argsort(1)[:, :k]


def test_items_arrive_at_the_configured_rate():
    """Per-step arrival counts are Binomial(M, churn_rate / steps_per_day) (chi-square), spread evenly over ids."""
    churn, per_day, items, steps = 2.0, 50, 400, 3000
    env = vector_env(churn=churn)
    env.reset(seed=0)
    g = torch.Generator().manual_seed(0)
    counts, per_slot = [], np.zeros(items)
    for _ in range(steps):
        *_, info = env.step(random_slates(env, g))
        arrived = info["item_arrived"].numpy()
        assert (arrived == arrived[:1]).all()  # one catalog: every user sees the same arrivals
        counts.append(arrived[0].sum())
        per_slot += arrived[0]
    h = churn / per_day
    counts = np.array(counts)
    edges = np.arange(0, 40)
    observed = np.array([(counts == c).sum() for c in edges[:-1]] + [(counts >= edges[-1]).sum()])
    expected = np.append(stats.binom.pmf(edges[:-1], items, h), stats.binom.sf(edges[-1] - 1, items, h)) * steps
    keep = expected >= 5  # pool the thin tails into their neighbours
    obs_pooled = [observed[keep].tolist()[0] + observed[: np.argmax(keep)].sum()]
    exp_pooled = [expected[keep].tolist()[0] + expected[: np.argmax(keep)].sum()]
    last = len(keep) - np.argmax(keep[::-1])
    obs_pooled += [*observed[keep][1:-1].tolist(), observed[keep][-1] + observed[last:].sum()]
    exp_pooled += [*expected[keep][1:-1].tolist(), expected[keep][-1] + expected[last:].sum()]
    assert sum(obs_pooled) == steps
    assert stats.chisquare(obs_pooled, np.array(exp_pooled) * steps / sum(exp_pooled)).pvalue > 1e-3
    assert stats.chisquare(per_slot).pvalue > 1e-3  # no id is favoured


def test_new_items_come_from_the_catalog_prior():
    config = SimulatorConfig(catalog={"churn_rate": 5.0, "quality_std": 0.7, "appeal_std": 0.4})
    world = make_world(config)
    drawn = [arrivals(config, world["topic_centre"], t) for t in range(1, 400)]
    items = {key: np.concatenate([a.items[key] for a in drawn]) for key in drawn[0].items}
    assert len(items["item_quality"]) > 30_000
    cat = config.catalog
    assert stats.kstest(items["item_quality"], "norm", args=(0, cat.quality_std)).pvalue > 1e-3
    assert stats.kstest(items["item_appeal"], "norm", args=(0, cat.appeal_std)).pvalue > 1e-3
    span = cat.max_length - cat.min_length
    assert stats.kstest(items["item_length"], "uniform", args=(cat.min_length, span)).pvalue > 1e-3
    assert stats.chisquare(np.bincount(items["item_topic"], minlength=cat.num_topics)).pvalue > 1e-3
    # an embedding lies around its topic's centre as the world's items do
    norms = np.linalg.norm(items["item_embedding"], axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    cos_new = (items["item_embedding"] * world["topic_centre"][items["item_topic"]]).sum(1)
    cos_old = (world["item_embedding"] * world["topic_centre"][world["item_topic"]]).sum(1)
    assert stats.ks_2samp(cos_new, cos_old).pvalue > 1e-3


def test_initial_ages_follow_the_stationary_lifetime_law():
    config = SimulatorConfig(catalog={"churn_rate": 5.0, "num_items": 20_000})
    age = -initial_birth(config)
    h = 5.0 / 50
    assert age.min() == 0 and float(age.mean()) == pytest.approx((1 - h) / h, rel=0.05)


def test_the_timeline_is_the_worlds_not_the_policys():
    """Two runs with other users, other slates and other seeds meet the same arrivals."""
    a, b = vector_env(users=3), vector_env(users=5)
    a.reset(seed=1)
    b.reset(seed=2)
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    for _ in range(50):
        *_, ia = a.step(random_slates(a, ga))
        *_, ib = b.step(random_slates(b, gb))
        assert torch.equal(ia["item_arrived"][0], ib["item_arrived"][0])
    torch.testing.assert_close(a.model.world["item_embedding"], b.model.world["item_embedding"], rtol=0, atol=0)


# -- what the agent sees ------------------------------------------------------------------------------------------
def test_an_arrived_item_is_new_in_the_next_observation_and_history_keeps_the_consumed_item():
    env = vector_env(users=64, churn=10.0, catalog={"num_items": 100})
    obs, _ = env.reset(seed=4)
    g = torch.Generator().manual_seed(4)
    seen_new = 0
    for _ in range(60):
        before = env.model.world["item_embedding"].clone()
        state = env.state
        slate = random_slates(env, g)
        obs, _, terminated, truncated, info = env.step(slate)
        arrived = info["item_arrived"][0]
        # the observation reads the new items: their features, and age 0 days
        ids = obs["candidate_ids"]
        new = arrived[ids]
        seen_new += int(new.sum())
        assert torch.all(obs["candidate_age"][new] == 0) and torch.all(obs["candidate_age"][~new] > 0)
        table = env.model.world["item_embedding"]
        torch.testing.assert_close(obs["candidates"][..., :-1], table[ids], rtol=0, atol=0)
        assert not torch.equal(table[arrived], before[arrived]) or not arrived.any()
        # the newest history entry is the item as it was when consumed, not whatever holds its id now
        done = terminated | truncated
        clicked = info["clicked"] & ~done
        chosen = state["candidates"].gather(1, info["chosen_candidate"].clamp(min=0)[:, None])[:, 0]
        torch.testing.assert_close(obs["history"][clicked, -1, :16], before[chosen[clicked]], rtol=0, atol=0)
    assert seen_new > 50


def test_age_is_in_each_populations_days():
    tasks = [
        {"catalog": {"churn_rate": 1.0, "seed": 1}, "population": {"steps_per_day": 10}},
        {"catalog": {"churn_rate": 1.0, "seed": 2}, "population": {"steps_per_day": 40}},
    ]
    env = TaskBatchVectorEnv(tasks, 4)
    obs, _ = env.reset(seed=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        obs, *_ = env.step(random_slates(env, g))
    birth = env.model.catalog.item_birth[obs["candidate_ids"]]
    steps_per_day = torch.tensor([10.0] * 4 + [40.0] * 4)[:, None]
    torch.testing.assert_close(obs["candidate_age"], (30 - birth).float() / steps_per_day)


def test_newcomers_join_the_running_catalog_and_a_reset_rewinds_it():
    env = vector_env(users=16, churn=2.0, population={"session_budget": 8.0})
    first, _ = env.reset(seed=5)
    g = torch.Generator().manual_seed(5)
    finished = 0
    for _ in range(40):
        *_, terminated, truncated, _ = env.step(random_slates(env, g))
        finished += int((terminated | truncated).sum())
    assert finished > 16 and torch.all(env.state["catalog_step"] == 40)
    again, _ = env.reset(seed=5)
    for key in first:
        assert torch.equal(first[key], again[key]), key


def test_a_checkpoint_resumes_the_catalog_exactly():
    env = vector_env(users=8, churn=3.0)
    env.reset(seed=6)
    g = torch.Generator().manual_seed(6)
    for _ in range(30):
        env.step(random_slates(env, g))
    checkpoint = env.get_checkpoint()
    slates = [random_slates(env, g) for _ in range(20)]
    expected = [env.step(s) for s in slates]
    other = vector_env(users=8, churn=3.0)  # a new process: its tables start at step 0
    other.load_checkpoint(checkpoint)
    for slate, (obs, reward, *_, info) in zip(slates, expected, strict=True):
        obs2, reward2, *_, info2 = other.step(slate)
        assert torch.equal(reward, reward2) and torch.equal(info["item_arrived"], info2["item_arrived"])
        for key in obs:
            assert torch.equal(obs[key], obs2[key]), key


def test_a_shard_sees_the_catalog_the_whole_batch_sees():
    rows = [1, 2, 5, 6]
    whole = vector_env(users=8, keyed_resets=True, population={"session_budget": 10.0})
    shard = vector_env(users=4, shard=(8, rows), population={"session_budget": 10.0})
    whole.reset(seed=3)
    shard.reset(seed=3)
    g = torch.Generator().manual_seed(3)
    for _ in range(25):
        slate = random_slates(whole, g)
        obs, reward, *_ = whole.step(slate)
        obs_s, reward_s, *_ = shard.step(slate[rows])
        assert torch.equal(reward[rows], reward_s)
        for key in obs:
            assert torch.equal(obs[key][rows], obs_s[key]), key


# -- per-item state starts afresh ----------------------------------------------------------------------------------
def test_pooled_item_statistics_start_afresh_for_a_new_item():
    tasks = [{"catalog": {"churn_rate": 5.0, "num_items": 60, "seed": s}} for s in range(2)]
    env = TaskBatchVectorEnv(tasks, 32, item_stats=True)
    env.reset(seed=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        before = env.model.item_stats.clone()
        *_, info = env.step(random_slates(env, g))
        arrived = info["item_arrived"][0]
        assert arrived.any() and torch.all(env.model.item_stats[arrived] == 0)
        assert torch.all(env.model.item_stats[~arrived] >= before[~arrived])
        assert env.model.item_stats[~arrived].sum() > before[~arrived].sum()


def run_agent(agent, env, steps, seed=0):
    obs, info = env.reset(seed=seed)
    agent.reset()
    for _ in range(steps):
        slate = agent.act(obs, info)
        obs, reward, terminated, truncated, info = env.step(slate)
        agent.observe(reward, terminated | truncated, info)
        if (terminated | truncated).any():
            agent.reset(terminated | truncated)
    return info


@pytest.mark.parametrize("name", ["popular", "greedy", "hbayes", "logged"])
def test_agents_forget_what_they_learned_of_a_replaced_item(name):
    env = vector_env(users=32, churn=5.0, catalog={"num_items": 80})
    items, g = env.model.num_items, torch.Generator().manual_seed(0)
    if name == "popular":
        agent = PopularRecommender(5, items, g, groups=2)

        def table():
            return agent.table.reshape(2, 2, items).transpose(0, 1).reshape(2, -1)  # ids of both groups in turn
    elif name == "greedy":
        agent = GreedyRecommender(5, items, g)

        def table():
            return agent.impressions
    elif name == "hbayes":
        agent = HierarchicalBayesRecommender(5, items, 16, g)

        def table():
            return agent.item_table[:, :-1]  # the last entry: where clicks on replaced items point (the prior)
    else:
        agent = LoggedItemStats(PopularRecommender(5, items, g), items, env.device)

        def table():
            return agent.table

    info = run_agent(agent, env, 25)
    arrived = info["item_arrived"][0]
    assert arrived.any()
    t = table()
    columns = arrived.repeat(t.shape[-1] // items)
    assert torch.all(t[..., columns] == 0) and t[..., ~columns].abs().sum() > 0
    if name == "hbayes":  # remembered clicks on a replaced item keep the prior's offset, not the new item's
        assert not torch.isin(agent.clicks_id, torch.nonzero(arrived)[:, 0]).any()
        assert (agent.clicks_id == agent.retired).any() and torch.all(agent.item_table[:, -1] == 0)


# -- bad input -----------------------------------------------------------------------------------------------------
def test_bad_churn_settings_are_named():
    with pytest.raises(ValueError, match="churn_rate"):
        SimulatorConfig(catalog={"churn_rate": -0.1})
    with pytest.raises(ValueError, match=r"catalog.churn_rate: expected at most population.steps_per_day \(10\)"):
        SimulatorConfig(catalog={"churn_rate": 11.0}, population={"steps_per_day": 10})
    with pytest.raises(ValueError, match=r"tasks\[1\].catalog.churn_rate: every task of a batch must have churn"):
        TaskBatchVectorEnv([{"catalog": {"churn_rate": 1.0}}, {"catalog": {"churn_rate": 0.0}}], 2)
    config = SimulatorConfig(catalog={"churn_rate": 1.0})
    world = {k: v for k, v in make_world(config).items() if k != "topic_centre"}  # as a calibrated catalog
    with pytest.raises(ValueError, match=r"catalog\.churn_rate: this catalog has no topic centres"):
        DriftingUsersModel(config, torch_backend(), world=world)


def test_timeline_draws_each_step_once():
    config = SimulatorConfig(catalog={"churn_rate": 2.0})
    timeline = CatalogTimeline([config], [make_world(config)["topic_centre"]], [0])
    first = timeline.at(7)
    assert timeline.at(7) is first
    again = CatalogTimeline([config], [make_world(config)["topic_centre"]], [0]).at(7)
    np.testing.assert_array_equal(first.slots, again.slots)


# -- item cold start -----------------------------------------------------------------------------------------------
def test_cold_start_counts_targeted_first_impressions_and_catch_up_by_hand():
    tracker = ItemColdStart(num_items=6, device="cpu", first_impressions=2)
    arrived = torch.zeros(2, 6, dtype=torch.bool)
    arrived[:, 4] = True  # item 4 is new from the next step on
    ids = torch.tensor([[0, 1, 4, 5], [2, 3, 4, 5]])
    tracker.add(ids, torch.tensor([[0, 1], [0, 1]]), torch.tensor([[0, 1], [0, 1]]), {"item_arrived": arrived})
    none = {"item_arrived": torch.zeros(2, 6, dtype=torch.bool)}
    # step 2: both users are shown item 4 (candidate 2); the oracle would show it to user 0 only
    tracker.add(ids, torch.tensor([[2, 0], [2, 1]]), torch.tensor([[2, 3], [0, 1]]), none)
    # step 3: user 1 is shown it again (a third impression: past the first two), the oracle shows it to both
    tracker.add(ids, torch.tensor([[0, 1], [3, 2]]), torch.tensor([[2, 0], [2, 3]]), none)
    rows = tracker.records_array()
    # item 4: 2 first impressions, 1 targeted; oracle exposure 1 + 2 = 3; 2 impressions against the oracle's 1 on
    # the step the oracle first shows it: caught up at once
    np.testing.assert_array_equal(rows, [[2, 1, 3, 0]])
    summary = tracker.summary()
    assert summary["targeted_share"] == 0.5 and summary["median_steps_to_oracle_exposure"] == 0.0
    assert summary["new_items"] == 1 and summary["reached_oracle_exposure"] == 1.0


def test_cold_start_summary_median_is_the_step_by_which_half_caught_up():
    rows = np.array([[2, 1, 3, 0], [2, 0, 4, -1]])  # one item caught up at once, one never
    assert summarise(rows, 2)["median_steps_to_oracle_exposure"] == 0.0
    assert summarise(rows[[1, 1, 0]], 2)["median_steps_to_oracle_exposure"] is None  # a third caught up
    assert summarise(rows, 2)["reached_oracle_exposure"] == 0.5 and summarise(rows, 2)["targeted_share"] == 0.25


def test_arrived_items_reads_a_batch_or_one_users_row():
    assert arrived_items({}, "cpu") is None
    batch = torch.tensor([[True, False, True]]).expand(4, 3)
    assert arrived_items({"item_arrived": batch}, "cpu", groups=2).tolist() == [True, False, True] * 2
    one_user = np.array([False, True, False])  # what the single-user env's info holds
    assert arrived_items({"item_arrived": one_user}, "cpu").tolist() == [False, True, False]


def test_meta_test_items_reports_cold_start_that_orders_oracle_above_random():
    distribution = load_yaml_config(TaskDistribution, Path(__file__).parents[1] / "configs" / "meta_tasks.yaml")
    assert distribution.sample("meta-test-items", 3, seed=0)[0].catalog.churn_rate > 0
    config = EvalConfig(tasks=2, users_per_task=32, seeds=2, shift_at=8, window=4, max_steps=80)
    result = adaptation_curves({}, distribution, "meta-test-items", 3, config, seed=0, metrics=False)
    oracle, random = (result["methods"][name]["item_cold_start"] for name in ("oracle", "random"))
    assert oracle["new_items"] > 100 and oracle["targeted_share"] == 1.0
    assert oracle["median_steps_to_oracle_exposure"] == 0.0 and oracle["reached_oracle_exposure"] == 1.0
    assert random["targeted_share"] < 0.5 < oracle["targeted_share"]
    fixed = adaptation_curves({}, distribution, "meta-test", 3, config, seed=0, metrics=False)
    assert fixed["methods"]["oracle"]["item_cold_start"] is None


def test_an_ab_test_hands_every_arm_the_catalogs_arrivals_after_its_first_users_leave(monkeypatch):
    """The arrivals reach a shared learner whoever is left: not only while the first user is present."""
    from metarec.abtest.simulate import simulate_arm

    seen = []
    original = PopularRecommender.forget_items

    def spy(self, info):
        seen.append(info["item_arrived"].clone())
        original(self, info)

    monkeypatch.setattr(PopularRecommender, "forget_items", spy)
    kwargs = {"catalog": {"churn_rate": 10.0, "num_items": 200}, "population": {"session_budget": 15.0}}
    simulate_arm("metarec/DriftingUsers-v0", kwargs, "popular", None, users=16, days=1, pre_period_days=0,
                 env_seed=0, agent_seed=0, control_seed=0)  # fmt: skip
    assert len(seen) >= 8  # users leave from the third step on; the last stay to the tenth
    config = SimulatorConfig(catalog=kwargs["catalog"], population=kwargs["population"])
    timeline = CatalogTimeline([config], [make_world(config)["topic_centre"]], [0])
    for step, arrived in enumerate(seen, start=1):
        assert torch.equal(arrived, arrived[:1].expand_as(arrived))  # every user's row alike
        expected = np.zeros(200, dtype=bool)
        expected[timeline.at(step).slots] = True
        np.testing.assert_array_equal(arrived[0].numpy(), expected)
