"""Plackett–Luce slates and the permutation-equivariant slate policy."""

from __future__ import annotations

import itertools
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy import stats

import metarec  # noqa: F401
from metarec.agents.nn.distributions import EXACT_ENTROPY_LIMIT, PlackettLuce, num_prefixes
from metarec.agents.nn.networks import SlatePolicy


def enumerate_log_probs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ordered slate and its probability by the textbook product formula (no shared code)."""
    n = logits.shape[-1]
    slates = torch.tensor(list(itertools.permutations(range(n), k)))
    weights = logits.exp()
    out = torch.zeros(logits.shape[0], len(slates), dtype=torch.float64)
    for j, slate in enumerate(slates.tolist()):
        remaining = weights.sum(-1).double()
        p = torch.ones(logits.shape[0], dtype=torch.float64)
        for item in slate:
            p = p * weights[:, item].double() / remaining
            remaining = remaining - weights[:, item].double()
        out[:, j] = p.log()
    return slates, out


@pytest.mark.parametrize(("n", "k"), [(4, 1), (5, 2), (5, 3), (6, 4)])
def test_log_prob_and_entropy_match_enumeration(n: int, k: int) -> None:
    logits = torch.randn(3, n, generator=torch.Generator().manual_seed(n * 10 + k), dtype=torch.float64) * 2
    dist = PlackettLuce(logits, k)
    slates, expected = enumerate_log_probs(logits, k)
    got = torch.stack([dist.log_prob(s.expand(3, k)) for s in slates], dim=1)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.exp().sum(1), torch.ones(3, dtype=torch.float64))
    entropy = -(expected.exp() * expected).sum(1)
    torch.testing.assert_close(dist.entropy(), entropy)


def test_repeated_candidate_has_probability_zero() -> None:
    dist = PlackettLuce(torch.zeros(1, 5), 2)
    assert dist.log_prob(torch.tensor([[3, 3]])).item() == -math.inf


def test_samples_follow_the_law() -> None:
    logits = torch.tensor([[1.5, 0.2, -0.7, 0.9]])
    dist = PlackettLuce(logits.expand(60_000, 4), 2)
    samples = dist.sample(torch.Generator().manual_seed(0))
    assert bool((samples[:, 0] != samples[:, 1]).all())
    slates, log_p = enumerate_log_probs(logits, 2)
    codes = (samples[:, 0] * 4 + samples[:, 1]).numpy()
    observed = np.array([(codes == a * 4 + b).sum() for a, b in slates.tolist()])
    probabilities = log_p.exp()[0].double().numpy()
    expected = probabilities / probabilities.sum() * len(codes)
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_chain_rule_entropy_estimate_is_unbiased_above_the_enumeration_limit() -> None:
    n, k = 12, 5  # too many prefixes to enumerate
    assert num_prefixes(n, k) * n > EXACT_ENTROPY_LIMIT
    logits = torch.randn(1, n, generator=torch.Generator().manual_seed(3))
    dist = PlackettLuce(logits.expand(40_000, n), k)
    estimate = dist.entropy(dist.sample(torch.Generator().manual_seed(4)))
    # Exact value by Monte Carlo of -log p(s) (a different estimator of the same quantity).
    samples = dist.sample(torch.Generator().manual_seed(5))
    exact_mc = -dist.log_prob(samples)
    assert abs(float(estimate.mean()) - float(exact_mc.mean())) < 4 * float(exact_mc.std()) / math.sqrt(40_000) + 0.01
    with pytest.raises(ValueError, match="slate"):
        dist.entropy()


def test_bad_slate_size_is_named() -> None:
    with pytest.raises(ValueError, match="slate_size"):
        PlackettLuce(torch.zeros(2, 3), 4)
    with pytest.raises(ValueError, match="slate: expected 2 positions"):
        PlackettLuce(torch.zeros(2, 3), 2).log_prob(torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("encoder", ["gru", "transformer", "mlp"])
def test_policy_is_permutation_equivariant_and_takes_any_candidate_count(encoder: str) -> None:
    env = gym.make_vec(
        "metarec/DriftingUsers-v0", num_envs=6, vectorization_mode="vector_entry_point", array_backend="torch"
    )
    observation, _ = env.reset(seed=0)
    torch.manual_seed(0)
    policy = SlatePolicy(env.single_observation_space, 5, hidden=32, history_encoder=encoder)
    logits, value = policy(observation)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    permuted = dict(observation, candidates=observation["candidates"][:, perm])
    logits_p, value_p = policy(permuted)
    torch.testing.assert_close(logits_p, logits[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value_p, value, atol=1e-5, rtol=1e-5)
    fewer = dict(observation, candidates=observation["candidates"][:, :7])
    assert policy(fewer)[0].shape == (6, 7)
    # The history matters: a policy that ignored it would be no policy for drifting users.
    changed = dict(observation, history=observation["history"] + 1.0)
    assert not torch.allclose(policy(changed)[0], logits)


def test_policy_rejects_an_observation_space_without_candidates() -> None:
    space = gym.spaces.Dict({"user": gym.spaces.Box(0, 1, (3,))})
    with pytest.raises(ValueError, match="candidates"):
        SlatePolicy(space, 2)
    with pytest.raises(ValueError, match="history_encoder"):
        env = gym.make("metarec/DriftingUsers-v0")
        SlatePolicy(env.observation_space, 5, history_encoder="lstm")  # type: ignore[arg-type]


def test_exact_entropy_with_a_candidate_masked_in_one_row_only() -> None:
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    logits[0, 2] = -math.inf  # row 0 can never show candidate 2; rows 1 and 2 can
    _, log_p = enumerate_log_probs(logits, 3)
    p = log_p.exp()
    expected = -(p * torch.where(p > 0, log_p, torch.zeros_like(log_p))).sum(1)
    torch.testing.assert_close(PlackettLuce(logits, 3).entropy(), expected)
