"""RL²'s item memory (``rl2.item_memory``): what each item earned, wherever it was shown, beyond what the belief
of the user it was shown to predicted, pooled over the users and shrunk toward 0. Checked against the
definition on hand-made beliefs, for what it must not learn from, and for what it refuses (end to end with the
population memory, in test_population_memory.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from metarec.meta.policy import Belief, Memory, RL2Policy, item_memory_features, remember_residuals
from metarec.meta.rl2 import RL2Config, memory_from, memory_state

ROOT = Path(__file__).parents[1]
F = 3


def _belief(thetas: torch.Tensor, shown: torch.Tensor, ids: torch.Tensor, items: torch.Tensor | None = None) -> Belief:
    """Beliefs whose estimates are ``thetas`` ``[B, F]`` (A = I, b = theta), waiting for the response to a slate
    of features ``shown`` ``[B, K, F]`` and catalog ids ``ids`` ``[B, K]``."""
    b = thetas.shape[0]
    inverse = torch.eye(F, dtype=torch.float64).expand(b, F, F).clone()
    return Belief(inverse, thetas.clone(), shown, 1.0, shown_ids=ids, items=items)


def test_each_item_shown_adds_its_response_less_what_its_viewers_belief_predicted() -> None:
    thetas = torch.tensor([[1.0, 0.0, 0.5], [0.0, 2.0, 0.0]], dtype=torch.float64)
    shown = torch.tensor([[[1.0, 1.0, 1.0], [2.0, 0.0, 1.0]], [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]], dtype=torch.float64)
    ids = torch.tensor([[4, 1], [4, 2]])
    targets = torch.tensor([[3.0, 0.0], [0.0, 5.0]], dtype=torch.float64)  # user 0 clicked item 4, user 1 item 2
    items = remember_residuals(_belief(thetas, shown, ids), shown, targets)
    predicted = torch.einsum("bkf,bf->bk", shown, thetas)  # [[1.5, 2.5], [2.0, 2.0]]
    expected = torch.zeros(5, 2, dtype=torch.float64)
    for u in range(2):
        for k in range(2):
            expected[ids[u, k], 0] += targets[u, k] - predicted[u, k]
            expected[ids[u, k], 1] += 1
    torch.testing.assert_close(items, expected)  # item 4: (3 - 1.5) + (0 - 2) from two viewers
    # the features: the mean residual shrunk by the prior's pseudo-counts, and how little is known
    mean, unknown = item_memory_features(items, torch.tensor([[4, 2, 0, 9]]), prior=2.0)
    torch.testing.assert_close(mean, torch.tensor([[-0.5 / 4, 3.0 / 3, 0.0, 0.0]]))
    torch.testing.assert_close(unknown, torch.tensor([[np.sqrt(2 / 4), np.sqrt(2 / 3), 1.0, 1.0]], dtype=torch.float32))


def test_users_not_served_and_empty_positions_add_nothing_and_the_table_keeps_what_it_had() -> None:
    thetas = torch.zeros(2, F, dtype=torch.float64)
    shown = torch.ones(2, 2, F, dtype=torch.float64)
    shown[0, 1] = 0  # an empty position: nothing to learn
    ids = torch.tensor([[0, 7], [3, 5]])
    before = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)  # item 0 already seen once
    items = remember_residuals(_belief(thetas, shown, ids, before), shown, torch.ones(2, 2, dtype=torch.float64),
                               rows=torch.tensor([True, False]))  # fmt: skip
    assert items.shape == (8, 2)  # grown to the largest id met
    torch.testing.assert_close(items[0], torch.tensor([2.0, 2.0], dtype=torch.float64))
    assert torch.all(items[1:] == 0)  # item 7 sat in an empty position; items 3 and 5 went to a user not served
    assert torch.equal(before, torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64))  # not written in place


def test_one_users_response_reaches_every_user_offered_the_item_once(memory_space) -> None:
    torch.manual_seed(0)
    policy = RL2Policy(memory_space, 2, 8, belief=True, item_memory=True)
    assert policy.scores == 4  # the belief's two, the item memory's two
    observation = {
        "candidates": torch.rand(3, 4, 3),
        "candidate_ids": torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8], [3, 9, 4, 1]]),
        "history": torch.zeros(3, 3, 5),
    }
    memory = policy.initial_memory(3)
    assert torch.all(policy.believe(memory, observation)[..., 2] == 0)  # nothing known of any item
    memory = policy.remember(torch.zeros(3, 8), memory.belief, observation, torch.tensor([[3, 0], [0, 1], [2, 1]]))
    reward = torch.tensor([2.0, 0.0, 0.0])
    memory = policy.learn(memory, reward, torch.tensor([0, -1, -1]))  # user 0 clicked item 3, at its first position
    scores = policy.believe(memory, observation)
    # a new user's belief predicts 0, so the residual is the response: item 3 earned 2 over one impression
    assert float(scores[2, 0, 2]) == pytest.approx(2.0 / 3.0)  # user 2 is offered item 3 first
    assert float(scores[0, 3, 2]) == pytest.approx(2.0 / 3.0)
    assert float(scores[2, 0, 3]) == pytest.approx(np.sqrt(2 / 3))
    assert float(scores[2, 3, 3]) == pytest.approx(1.0)  # item 1 was never shown
    # item 9 was shown to user 2 and not clicked: a residual of 0 over one impression
    assert float(scores[2, 1, 2]) == 0.0 and float(scores[2, 1, 3]) == pytest.approx(np.sqrt(2 / 3))
    again = policy.learn(memory, reward, torch.tensor([0, -1, -1]))  # the slate is spent: nothing more to add
    torch.testing.assert_close(again.belief.items, memory.belief.items)
    # a checkpoint keeps the item memory, and a policy without one refuses it
    restored = memory_from(memory_state(memory), policy, "cpu")
    torch.testing.assert_close(restored.belief.items, memory.belief.items)
    plain = RL2Policy(memory_space, 2, 8, belief=True)
    with pytest.raises(ValueError, match=r"^checkpoint: its memory has an item memory, but rl2.item_memory is False"):
        memory_from(memory_state(memory), plain, "cpu")
    assert isinstance(restored, Memory)


def test_bad_item_memory_settings_are_refused_by_name(memory_space) -> None:
    with pytest.raises(ValidationError, match=r"item_memory: the item memory pools the residuals"):
        RL2Config(item_memory=True, belief=False)
    with pytest.raises(ValidationError, match=r"item_prior"):
        RL2Config(item_memory=True, item_prior=0)
    with pytest.raises(ValueError, match=r"^item_prior: expected a number > 0, got 0"):
        RL2Policy(memory_space, 2, 8, belief=True, item_memory=True, item_prior=0)
