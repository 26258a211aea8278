"""PPO's clipped objective and its gradient step, shared by :class:`~metarec.agents.ppo.trainer.BatchedPPO`
and RL² (:class:`~metarec.meta.rl2.RL2Trainer`).

A minibatch's loss is kept as its :data:`TERMS` (policy loss, value loss, entropy, approx KL,
clipped count), each a sum over this process's samples divided by the whole minibatch's count: summed
over the processes of a run, they are the minibatch's means. :func:`gradient_step` sums the gradients
and the terms over the processes, stops on a non-finite loss, clips the gradient norm and steps.
:func:`check_rollout` is the non-finite guard on a rollout, decided by every process together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

#: What :func:`clipped_terms` returns, in order (the last two are diagnostics, without gradient).
TERMS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipped")

Reduce = Callable[[list[torch.Tensor]], None]
"""Sums tensors in place over the processes of a run (nothing in one process)."""


def no_terms(device: torch.device | str) -> torch.Tensor:
    """The :data:`TERMS` of a process holding none of a minibatch's samples."""
    return torch.zeros(len(TERMS), device=device)


def clipped_terms(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    value: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor | Callable[[], torch.Tensor],
    count: int,
    clip_coef: float,
    old_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """The :data:`TERMS` of PPO's clipped objective (Schulman et al., 2017) over this process's samples,
    each summed and divided by ``count``, the whole minibatch's samples. ``old_value`` (the rollout's
    value estimates) clips the value loss like the ratio; without it the value loss is not clipped.
    ``entropy`` may be a callable computing it: called where its sum is taken, so that the autograd
    graph is built in the order the update has always built it (and its gradients are bitwise the same)."""
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    clipped = ratio.clamp(1 - clip_coef, 1 + clip_coef)
    if old_value is not None:
        value_clipped = old_value + (value - old_value).clamp(-clip_coef, clip_coef)
        value_error = torch.max((value - returns) ** 2, (value_clipped - returns) ** 2)
    else:
        value_error = (value - returns) ** 2
    with torch.no_grad():
        kl = ((ratio - 1) - log_ratio).sum()
        clipped_count = ((ratio - 1).abs() > clip_coef).float().sum()
    return torch.stack([
        torch.max(-advantages * ratio, -advantages * clipped).sum(), 0.5 * value_error.sum(),
        (entropy() if callable(entropy) else entropy).sum(), kl, clipped_count,
    ]) / count  # fmt: skip


def ppo_loss(terms: torch.Tensor, ent_coef: float, vf_coef: float) -> torch.Tensor:
    """The loss minimised: policy loss less the entropy bonus plus the weighted value loss."""
    return terms[0] - ent_coef * terms[2] + vf_coef * terms[1]


def ensure_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Gives every parameter a (zero) gradient, so that every process sums every gradient, also one
    with no samples in a minibatch."""
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)


def gradient_step(
    optimizer: torch.optim.Optimizer,
    parameters: list[torch.nn.Parameter],
    terms: torch.Tensor,
    ent_coef: float,
    vf_coef: float,
    max_grad_norm: float,
    reduce: Reduce,
    non_finite: Callable[[], str],
) -> torch.Tensor:
    """One optimizer step on a minibatch's ``terms`` (see :func:`clipped_terms`): back-propagates
    this process's share of the loss, sums the gradients and the terms over the processes
    (``reduce``), raises FloatingPointError with ``non_finite()`` where a loss term is NaN or
    infinite, clips the gradient norm and steps. Returns the terms summed over the processes."""
    loss = ppo_loss(terms, ent_coef, vf_coef)
    optimizer.zero_grad(set_to_none=False)
    if loss.requires_grad:
        loss.backward()
    reported = terms.detach().clone()
    reduce([*(p.grad for p in parameters), reported])
    if not bool(torch.isfinite(reported[:3]).all()):
        raise FloatingPointError(non_finite())
    torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    return reported


def check_rollout(tensors: Mapping[str, torch.Tensor], reduce: Reduce, message: Callable[[str], str]) -> None:
    """NaN guard on what the simulator handed over, before any weight changes: raises
    FloatingPointError with ``message("the rollout's NAME")`` for the first of ``tensors`` holding
    NaN or inf. Every process decides together (``reduce``), so none is left waiting in a collective:
    one whose own rollout is finite raises ``message("another process's rollout")``."""
    bad = torch.stack([~torch.isfinite(t).all() for t in tensors.values()]).to(torch.float64)
    reduce([bad])
    if bool(bad.any()):
        for name, tensor in tensors.items():
            if not bool(torch.isfinite(tensor).all()):
                raise FloatingPointError(message(f"the rollout's {name}"))
        raise FloatingPointError(message("another process's rollout"))
