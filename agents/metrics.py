"""Ranking metrics of shown slates against the simulator's ground truth, and errors of predicted responses: one
module for ``metarec evaluate``, the adaptation protocol (``meta-eval``) and A/B tests.

Against each user's true current preferences (``info["candidate_utilities"]``, which a live system never sees):

* a candidate is *relevant* when the user truly prefers it to choosing nothing (its utility above the no-click
  utility); where a model has no no-click utility, the top K candidates by utility are the relevant ones;
* ``precision@K``: relevant shown candidates over K;
* ``recall@K``: relevant shown candidates over the relevant candidates on offer (defined on steps with at
  least one; those steps are counted apart, ``recall_steps``);
* ``F1@K``: the harmonic mean of that step's precision and recall (0 where both are 0);
* ``NDCG@K``: the slate's DCG with gains softmax(utility / choice temperature) over the candidates, divided by
  the DCG of the best K (position discount 1 / log2(1 + position)).

Of a recommender that predicts a response (:meth:`~metarec.agents.base.Recommender.response_prediction`):
``MAE`` and ``MSE`` of its prediction against the realised response, per shown item (the reward at the
clicked position, 0 at the others, as LinUCB regresses it; or the click).
"""

from __future__ import annotations

from typing import Any

import torch

#: What :func:`relevance` returns per step and user.
RELEVANCE = ("precision", "recall", "recall_steps", "f1", "ndcg")


class Relevance:
    """The ranking metrics of slates in an env: its slate size, choice temperature and no-click utility (each
    task's, for the users of each task of a task batch)."""

    def __init__(self, env: Any) -> None:
        self.k = 1 if getattr(env, "single_item", False) else int(env.model.slate_size)
        tasks = getattr(env, "tasks", None)
        populations = [task.population for task in tasks] if tasks else [getattr(env.config, "population", None)]
        temperature = [float(getattr(p, "choice_temperature", 1.0)) for p in populations]
        no_click = [getattr(p, "no_click_utility", None) for p in populations]
        rows = int(getattr(env, "users_per_task", 1)) if tasks else 1
        self.temperature = torch.tensor(temperature, device=env.device).repeat_interleave(rows)[:, None]
        self.no_click_utility = None
        if all(value is not None for value in no_click):
            self.no_click_utility = torch.tensor(no_click, device=env.device).repeat_interleave(rows)[:, None]
        self.discount = 1.0 / torch.log2(torch.arange(self.k, device=env.device, dtype=torch.float32) + 2.0)

    def __call__(self, utility: torch.Tensor, slate: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[B]`` float32 per metric of :data:`RELEVANCE` for slates ``[B, K]`` (``[B]`` for one item) of
        candidates with true utilities ``[B, N]``; a candidate shown twice counts once."""
        slate = slate[:, None] if slate.dim() == 1 else slate
        utility = utility.to(torch.float32)
        k = self.k
        shown = shown_once(slate)
        if self.no_click_utility is not None:
            relevant = utility > self.no_click_utility
        else:
            top = utility.topk(k, dim=1).indices
            relevant = torch.zeros_like(utility, dtype=torch.bool).scatter_(1, top, True)
        hits = (relevant.gather(1, slate) & shown).sum(1).to(torch.float32)
        count = relevant.sum(1).to(torch.float32)
        precision = hits / k
        recall = torch.where(count > 0, hits / count.clamp_min(1.0), 0.0)
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-30), 0.0)
        gain = torch.softmax(utility / self.temperature, dim=1)
        dcg = (gain.gather(1, slate) * shown * self.discount).sum(1)
        ideal = (gain.topk(k, dim=1).values * self.discount).sum(1)
        return {"precision": precision, "recall": recall, "recall_steps": (count > 0).to(torch.float32), "f1": f1,
                "ndcg": dcg / ideal.clamp_min(1e-30)}  # fmt: skip


def shown_once(slate: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` bool: True where a slate position shows its index for the first time (repeats are shown once)."""
    k = slate.shape[1]
    same = slate[:, :, None] == slate[:, None, :]  # [B, K, K]
    earlier = torch.ones(k, k, dtype=torch.bool, device=slate.device).tril(-1)
    return ~(same & earlier).any(2)


def response_errors(prediction: tuple[str, torch.Tensor, torch.Tensor | None], reward: torch.Tensor,
                    info: dict[str, Any], batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per user ``[batch]``: summed absolute and squared errors of a recommender's predicted responses to its last
    slates, and how many predictions they sum (0 for users it did not predict for)."""
    from metarec.agents.baselines.bandits import slate_targets

    target, predicted, rows = prediction
    k = predicted.shape[1]
    realised = slate_targets(reward, info, k, target)  # [B, K]
    if rows is not None:
        realised = realised[rows]
    error = predicted.to(torch.float32) - realised.to(predicted.device)
    out = [torch.zeros(batch, device=predicted.device) for _ in range(3)]
    index = torch.arange(batch, device=predicted.device) if rows is None else rows
    for total, value in zip(out, (error.abs().sum(1), (error * error).sum(1), torch.full_like(error[:, 0], k)),
                            strict=True):  # fmt: skip
        total.index_add_(0, index, value)
    return out[0], out[1], out[2]


class SessionMetrics:
    """The ranking metrics, clicks and engagement of a run of users, summed per session (the adaptation
    protocol's unit): :meth:`add` once a step, :func:`session_summary` of the sums (added over runs)."""

    KEYS = (*RELEVANCE, "clicks", "engagement", "steps")

    def __init__(self, env: Any, sessions: int) -> None:
        self.ranking = Relevance(env)
        self.sums = torch.zeros(sessions, len(self.KEYS), dtype=torch.float64, device=env.device)

    def add(self, utility: torch.Tensor | None, slate: torch.Tensor, reward: torch.Tensor, info: dict[str, Any],
            session: torch.Tensor, live: torch.Tensor) -> None:  # fmt: skip
        """One step: the true ``utility`` of the candidates the ``slate`` was chosen from (None without ground
        truth: nothing is added), the step's reward and info, each user's session and who was there."""
        if utility is None:
            return
        ranked = self.ranking(utility, slate)
        columns = [ranked[key] for key in RELEVANCE]
        columns += [info["clicked"].to(torch.float32), info.get("engagement", reward).to(torch.float32)]
        step = torch.stack([*columns, torch.ones_like(columns[0])], dim=1).to(torch.float64)
        self.sums.index_add_(0, session, step * live[:, None])


def session_summary(sums: Any, k: int) -> dict[str, Any]:
    """Per session, from :class:`SessionMetrics` sums ``[sessions, len(KEYS)]``: precision, recall, F1 and NDCG
    at ``k``, CTR and engagement per step (None for a session without steps)."""
    column = dict(zip(SessionMetrics.KEYS, torch.as_tensor(sums).T.tolist(), strict=True))

    def ratio(top: str, bottom: str) -> list[float | None]:
        return [a / b if b else None for a, b in zip(column[top], column[bottom], strict=True)]

    return {"k": k, "precision_at_k": ratio("precision", "steps"), "recall_at_k": ratio("recall", "recall_steps"),
            "f1_at_k": ratio("f1", "steps"), "ndcg_at_k": ratio("ndcg", "steps"), "ctr": ratio("clicks", "steps"),
            "engagement_per_step": ratio("engagement", "steps")}  # fmt: skip
