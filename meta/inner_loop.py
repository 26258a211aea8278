"""The task-level pieces of gradient-based meta-learning (see :mod:`metarec.meta.gradient`): per-task parameters,
one inner adaptation step, the Reptile update, and the checks they share."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.func import grad_and_value

Params = dict[str, torch.Tensor]
"""Parameters by name, as in ``module.named_parameters()``."""

LossFn = Callable[[Params, Any], torch.Tensor]
"""``loss_fn(params_one_task, batch_one_task) -> scalar tensor``: the loss of a single task."""

Method = Literal["maml", "fomaml", "reptile"]
METHODS: tuple[str, ...] = ("maml", "fomaml", "reptile")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")

learner_ids = itertools.count(1)


@dataclass(frozen=True, eq=False, repr=False)
class TaskParams:
    """Per-task copies of the meta-parameters, as produced by :meth:`GradientMetaLearner.clone` and ``adapt``.

    Attributes:
        params: every meta-parameter with a leading task dimension, ``[num_tasks, *param.shape]``.
        num_tasks: the task dimension ``T``.
        learner_id: identifies the learner (and the θ lineage) these parameters were cloned from.
        generation: the number of meta-steps the learner had taken when these parameters were cloned.
        inner_steps: the number of inner adaptation steps applied since cloning.
    """

    params: Params
    num_tasks: int
    learner_id: int
    generation: int
    inner_steps: int = 0

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}: {tuple(p.shape)}" for name, p in self.params.items())
        return (
            f"TaskParams(num_tasks={self.num_tasks}, learner_id={self.learner_id}, generation={self.generation}, "
            f"inner_steps={self.inner_steps}, params={{{shapes}}})"
        )


def check_positive_finite(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` unless it is a positive finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r} of type {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_scalar_loss(loss: Any, what: str) -> torch.Tensor:
    """Raise ``ValueError`` unless ``loss`` is a 0-dim floating-point tensor (shape only: safe under ``vmap``)."""
    if not isinstance(loss, torch.Tensor):
        raise ValueError(f"{what} must return a scalar tensor, got {type(loss).__name__}")
    if loss.dim() != 0:
        raise ValueError(
            f"{what} must return a scalar (0-dim) tensor for one task, got shape {tuple(loss.shape)}; "
            "reduce it (e.g. .mean()) inside the loss"
        )
    if not loss.is_floating_point():
        raise ValueError(f"{what} must return a floating-point tensor, got dtype {loss.dtype}")
    return loss


def adapt_step_with_loss(
    f_loss: LossFn, params: Params, batch: Any, lr: float, first_order: bool
) -> tuple[Params, torch.Tensor]:
    """One inner SGD step for one task; returns the adapted parameters and the (detached) loss before the step."""

    def checked_loss(p: Params, b: Any) -> torch.Tensor:
        return check_scalar_loss(f_loss(p, b), "loss_fn")

    # First order: the gradient is taken at detached parameters, so it is a constant for the outer autograd graph.
    at = {name: p.detach() for name, p in params.items()} if first_order else params
    grads, loss = grad_and_value(checked_loss)(at, batch)
    adapted = {name: p - lr * grads[name] for name, p in params.items()}
    return adapted, loss.detach()


def adapt_step(f_loss: LossFn, params: Params, batch: Any, lr: float, first_order: bool) -> Params:
    """One inner SGD step for ONE task: ``θ' = θ − lr · ∇_θ f_loss(θ, batch)``.

    Args:
        f_loss: ``f_loss(params, batch) -> scalar tensor``, the task's loss.
        params: the task's parameters (no task dimension).
        batch: the task's data, any pytree ``f_loss`` accepts.
        lr: the inner learning rate.
        first_order: if ``True`` the gradient is computed at detached parameters, so the result depends on
            ``params`` only through the identity term (first-order MAML). If ``False`` the gradient stays
            differentiable with respect to ``params`` (second-order MAML).

    Returns:
        The adapted parameters, one tensor per name.

    The function uses ``torch.func.grad`` and works unchanged inside ``torch.func.vmap``.
    """
    return adapt_step_with_loss(f_loss, params, batch, lr, first_order)[0]


def reptile_update(theta: Params, adapted: Params, epsilon: float) -> Params:
    """The Reptile meta-update ``θ + ε · (mean_t θ'_t − θ)``.

    Args:
        theta: the meta-parameters, each of shape ``[*shape]``.
        adapted: the adapted task parameters, each of shape ``[T, *shape]``.
        epsilon: the step size ε (``1`` jumps to the mean of the adapted parameters).

    Returns:
        The new meta-parameters (new tensors; the inputs are not modified).
    """
    epsilon = check_positive_finite("epsilon", epsilon)
    if set(theta) != set(adapted):
        raise ValueError(
            f"adapted parameters must have the same names as theta: missing {sorted(set(theta) - set(adapted))}, "
            f"unexpected {sorted(set(adapted) - set(theta))}"
        )
    new: Params = {}
    for name, p in theta.items():
        q = adapted[name]
        if q.dim() != p.dim() + 1 or q.shape[1:] != p.shape:
            raise ValueError(f"adapted[{name!r}] must have shape [T, *{tuple(p.shape)}], got {tuple(q.shape)}")
        new[name] = p + epsilon * (q.mean(dim=0) - p)
    return new


def leaves_with_paths(tree: Any, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(path, tensor)`` for every leaf of a batch pytree; reject leaves ``vmap`` cannot batch."""
    if isinstance(tree, torch.Tensor):
        yield path, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves_with_paths(value, f"{path}[{key!r}]")
    elif isinstance(tree, tuple) and hasattr(tree, "_fields"):  # namedtuple
        for field, value in zip(tree._fields, tree, strict=True):
            yield from leaves_with_paths(value, f"{path}.{field}")
    elif isinstance(tree, (tuple, list)):
        for index, value in enumerate(tree):
            yield from leaves_with_paths(value, f"{path}[{index}]")
    else:
        raise ValueError(
            f"{path}: batch leaves must be tensors with a leading task dimension (in dicts, tuples, lists or "
            f"namedtuples), got {type(tree).__name__}"
        )
