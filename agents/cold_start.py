"""Item cold start under catalog churn: how a recommender treats the items that arrive while it serves.

Every item that enters the catalog during a run (``info["item_arrived"]``) is followed from its arrival until it
retires or the run ends. Against the simulator's ground truth of each decision (the myopic oracle's slate,
``info["oracle_slate"]``, which a live system never sees):

* an impression of the item is *targeted* when the myopic oracle would have shown it to that user at that step:
  the item is among the user's best choices right now;
* ``targeted_share``: targeted impressions over all impressions, pooled over the first ``first_impressions``
  impressions of every new item (a random recommender scores about the share of candidates the oracle shows);
* the item's *oracle exposure* is how many of the same users, at the same steps, the myopic oracle would have
  shown it to. ``reached_oracle_exposure``: the share of new items with some oracle exposure whose impressions
  caught up with it (cumulative impressions at least the cumulative oracle exposure at some step);
  ``median_steps_to_oracle_exposure``: the number of steps, from the oracle's first exposure of an item, by which
  half of those items had caught up (0: at once, as the oracle itself does); None when fewer than half ever did.
* ``new_items`` counts every item that arrived, also those that arrived too late in the run to be offered.

The users counted are those ``active`` marks (the ones the recommender serves); a slate position repeated is one
impression.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metarec.envs.core.choice import shown_mask

#: Impressions of a new item that ``targeted_share`` looks at, by default.
FIRST_IMPRESSIONS = 20


class ItemColdStart:
    """Follows the items that arrive during a run of ``num_items`` catalog ids; :meth:`add` each step,
    :meth:`summary` at the end."""

    def __init__(self, num_items: int, device: Any, first_impressions: int = FIRST_IMPRESSIONS) -> None:
        if isinstance(first_impressions, bool) or not isinstance(first_impressions, int) or first_impressions < 1:
            raise ValueError(f"first_impressions: expected a positive integer, got {first_impressions!r}")
        self.first = first_impressions
        self.step = 0
        zeros = torch.zeros(num_items, dtype=torch.int64, device=device)
        self.new = torch.zeros(num_items, dtype=torch.bool, device=device)  # ids whose item arrived in the run
        self.exposed_at = torch.full((num_items,), -1, dtype=torch.int64, device=device)  # oracle's first exposure
        self.impressions, self.exposure = zeros.clone(), zeros.clone()  # cumulative, policy's and oracle's
        self.early, self.early_targeted = zeros.clone(), zeros.clone()  # within the first impressions
        self.caught_up = torch.full((num_items,), -1, dtype=torch.int64, device=device)  # steps to catch up
        self.records: list[np.ndarray] = []  # [early, early_targeted, exposure, caught_up] of finished items

    def add(self, candidate_ids: torch.Tensor, slate: torch.Tensor, oracle_slate: torch.Tensor,
            info: dict[str, Any], active: torch.Tensor | None = None) -> None:  # fmt: skip
        """One step: ``candidate_ids`` ``[B, N]`` on offer, the ``slate`` shown and the oracle's (``[B, K]``), the
        step's ``info`` (its ``item_arrived`` marks the ids whose item is new from the next step)."""
        slate = slate[:, None] if slate.dim() == 1 else slate
        rows = torch.ones(slate.shape[0], dtype=torch.bool, device=slate.device) if active is None else active
        shown = shown_mask(torch, slate) & rows[:, None]
        ids = candidate_ids.gather(1, slate)  # [B, K]
        oracle = candidate_ids.gather(1, oracle_slate)
        targeted = (ids[:, :, None] == oracle[:, None, :]).any(2) & shown
        shown_ids, hit = ids[shown], targeted[shown]
        # impressions within an item's first ones: this step's, ranked after what it already had
        order = torch.argsort(shown_ids, stable=True)
        sorted_ids = shown_ids[order]
        start = torch.searchsorted(sorted_ids, sorted_ids, right=False)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.shape[0], device=order.device) - start
        early = (self.impressions[shown_ids] + rank) < self.first
        self.early.index_add_(0, shown_ids, early.to(torch.int64))
        self.early_targeted.index_add_(0, shown_ids, (early & hit).to(torch.int64))
        self.impressions.index_add_(0, shown_ids, torch.ones_like(shown_ids))
        oracle_ids = oracle[(shown_mask(torch, oracle_slate) & rows[:, None])]
        self.exposure.index_add_(0, oracle_ids, torch.ones_like(oracle_ids))
        self.exposed_at[self.new & (self.exposed_at < 0) & (self.exposure > 0)] = self.step
        reached = self.new & (self.caught_up < 0) & (self.exposure > 0) & (self.impressions >= self.exposure)
        self.caught_up[reached] = self.step - self.exposed_at[reached]
        self.step += 1
        arrived = info.get("item_arrived")
        if arrived is not None:
            self._arrive(torch.as_tensor(arrived[0], device=self.new.device).to(torch.bool))

    def _arrive(self, arrived: torch.Tensor) -> None:
        finished = arrived & self.new
        if bool(finished.any()):
            self.records.append(self._rows(finished))
        for table in (self.impressions, self.exposure, self.early, self.early_targeted):
            table[arrived] = 0
        self.caught_up[arrived] = -1
        self.exposed_at[arrived] = -1
        self.new |= arrived

    def _rows(self, ids: torch.Tensor) -> np.ndarray:
        return (
            torch.stack([self.early[ids], self.early_targeted[ids], self.exposure[ids], self.caught_up[ids]], dim=1)
            .cpu()
            .numpy()
        )

    def records_array(self) -> np.ndarray:
        """``[items, 4]`` int64: first impressions, targeted ones among them, oracle exposure and steps to catch
        up (-1: never) of every item that arrived in the run."""
        return np.concatenate([*self.records, self._rows(self.new)]) if self.new.any() else np.zeros((0, 4), int)

    def summary(self) -> dict[str, Any]:
        return summarise(self.records_array(), self.first)


def summarise(records: np.ndarray, first_impressions: int = FIRST_IMPRESSIONS) -> dict[str, Any]:
    """The JSON-ready summary (see the module docstring) of :meth:`ItemColdStart.records_array` rows, pooled
    over runs by concatenating them."""
    early, targeted = int(records[:, 0].sum()), int(records[:, 1].sum())
    exposed = records[records[:, 2] > 0]
    caught = exposed[:, 3] >= 0
    steps = np.sort(np.where(caught, exposed[:, 3], np.inf))
    median = float(steps[(len(steps) + 1) // 2 - 1]) if len(exposed) else None  # the lower median: half within it
    return {
        "new_items": len(records),
        "first_impressions": first_impressions,
        "impressions": early,
        "targeted_share": targeted / early if early else None,
        "items_with_oracle_exposure": len(exposed),
        "reached_oracle_exposure": float(caught.mean()) if len(exposed) else None,
        "median_steps_to_oracle_exposure": median if median is not None and np.isfinite(median) else None,
    }
