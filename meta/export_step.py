"""One step of an RL² recommender with its memory as explicit inputs and outputs, for
:func:`metarec.agents.export.export`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metarec.agents.export import with_item_stats
from metarec.meta.policy import Belief, Memory, RL2Policy


class RL2Step(nn.Module):
    """What :class:`~metarec.meta.evaluate.RL2Recommender` does in ``observe`` (the belief learns the response to
    the last slate) and then in ``act``, greedily, as one call: the observation (and the raw item statistics),
    ``reward`` ``[B]`` and ``chosen_position`` ``[B]`` (-1: no click) of the last slate, and the memory,
    ``hidden`` ``[B, H]``, ``last_slate`` ``[B, F]`` and, with the belief, ``inverse`` ``[B, F+1, F+1]``,
    ``response`` ``[B, F+1]``, ``shown`` ``[B, K, F+1]``; it returns the scores, the slate and the next memory.
    A new user's memory is zeros, except ``inverse``: the identity over the belief's ridge. With the population
    memory the users of a call are one population, so the batch is fixed."""

    def __init__(self, policy: RL2Policy, keys: list[str], item_stats: bool = False) -> None:
        super().__init__()
        if type(policy) is not RL2Policy:
            raise ValueError(f"run: {type(policy).__name__} keeps another memory than RL²'s; it does not export yet")
        if policy.item_memory:
            raise ValueError("run: rl2.item_memory keeps a table over the catalogue that grows as items are seen; "
                             "a policy with it does not export yet")  # fmt: skip
        if policy.change_test:
            raise ValueError("run: rl2.change_test keeps a second belief and the evidence of a change; a policy "
                             "with it does not export yet")  # fmt: skip
        self.policy, self.keys, self.item_stats = policy, list(keys), item_stats
        self.fixed_batch = policy.population

    def memory_names(self) -> list[str]:
        return ["hidden", "last_slate"] + (["inverse", "response", "shown"] if self.policy.belief else [])

    def extra_names(self) -> list[str]:
        return ["reward", "chosen_position", *self.memory_names()]

    def extra_inputs(self, batch: int) -> list[torch.Tensor]:
        no_response = [torch.zeros(batch), torch.full((batch,), -1, dtype=torch.int64)]
        return no_response + list(self.initial_memory(batch).values())

    def initial_memory(self, batch: int) -> dict[str, torch.Tensor]:
        """A new user's memory tensors, by name."""
        memory = self.policy.initial_memory(batch)
        tensors = {"hidden": memory.hidden, "last_slate": memory.last_slate}
        if memory.belief is not None:
            tensors |= {"inverse": memory.belief.inverse, "response": memory.belief.response,
                        "shown": memory.belief.shown}  # fmt: skip
        return tensors

    def output_names(self) -> list[str]:
        return ["scores", "slate", *(f"next_{name}" for name in self.memory_names())]

    def about(self) -> dict[str, Any]:
        ridge = self.policy.belief_ridge if self.policy.belief else None
        return {"kind": "rl2", "new_user_memory": "zeros, except inverse: the identity over belief_ridge",
                "belief_ridge": ridge}  # fmt: skip

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.keys)
        observation = dict(zip(self.keys, tensors[:n], strict=True))
        rest = list(tensors[n:])
        if self.item_stats:
            observation["candidates"] = with_item_stats(observation["candidates"], rest.pop(0))
        reward, position, hidden, last_slate = rest[:4]
        belief = Belief(*rest[4:7], self.policy.belief_ridge) if self.policy.belief else None
        memory = self.policy.learn(Memory(hidden, last_slate, belief), reward, position)
        hidden = self.policy.read(memory, observation, reward)
        batch = observation["candidates"].shape[0]
        beliefs = self.policy.believe(memory, observation, batch if self.policy.population else None)
        logits, _ = self.policy.act_from(observation, hidden, beliefs)
        slate = torch.topk(logits, self.policy.slate_size, dim=-1).indices
        memory = self.policy.remember(hidden, memory.belief, observation, slate)
        out = [logits, slate, memory.hidden, memory.last_slate]
        if memory.belief is not None:
            out += [memory.belief.inverse, memory.belief.response, memory.belief.shown]
        return tuple(out)
