"""Gradient-based meta-learning on ``torch.func``: MAML, first-order MAML and Reptile, vectorised over tasks.

The meta-parameters θ are the trainable ``nn.Parameter`` s of an ordinary ``nn.Module``. A meta-iteration over
``T`` tasks looks like this::

    learner = GradientMetaLearner(policy, method="maml", inner_lr=0.1, outer_lr=1e-3)
    task_params = learner.clone(T)                              # θ broadcast to [T, ...]
    policy_fn = learner.functional()                            # f(params_one_task, *args) -> module output
    actions = torch.vmap(policy_fn)(task_params.params, obs_T)  # per-task rollouts
    adapted = learner.adapt(task_params, inner_loss, support_batch, steps=1)
    query_loss = torch.vmap(outer_loss)(adapted.params, query_batch).mean()
    learner.meta_step(adapted, query_loss)                      # Reptile: learner.meta_step(adapted)

``inner_loss(params_one_task, batch_one_task)`` is the loss of *one* task, written as if there were no task dimension;
:meth:`GradientMetaLearner.adapt` vectorises it with ``torch.func.vmap(torch.func.grad(...))``. Every leaf of a batch
pytree (a ``dict``, ``tuple``/``list`` or ``namedtuple`` of tensors) carries a leading task dimension ``T``.

Methods
-------
* ``"maml"``: the inner gradient stays in the autograd graph, so ``query_loss.backward()`` differentiates through it
  (the second-order meta-gradient, with Hessian-vector products of the inner loss). ``torch.func.grad`` composes with
  ordinary autograd: the gradient it returns is itself differentiable with respect to tensors that require grad
  outside the transform, also under ``vmap``.
* ``"fomaml"``: the inner gradient is evaluated at detached parameters, so ``dθ'/dθ = I`` and the meta-gradient is
  the query gradient at the adapted parameters (the first-order approximation).
* ``"reptile"``: no autograd graph is built. The meta-step moves θ toward the mean adapted parameters,
  ``θ ← θ + ε·(mean_t θ'_t − θ)``. With ``optimizer="sgd"`` this is done exactly as written, with
  ``ε = learner.optimizer.param_groups[0]["lr"]`` (``outer_lr`` unless a scheduler changed it); the SGD optimizer
  itself is never stepped. With ``optimizer="adam"`` the pseudo-gradient ``θ − mean_t θ'_t`` (that is,
  ``−(mean_t θ'_t − θ)``) is written to ``.grad`` and Adam takes the step, so ``outer_lr`` is then Adam's step size
  rather than an interpolation factor.

Requirements and caveats
------------------------
* The module must be vmap-compatible: its forward, and the losses, may use only operators with ``vmap`` batching
  rules and must not branch on tensor values (no ``.item()``, ``if x > 0``). Linear layers and MLPs are fine;
  recurrent modules such as ``nn.GRU`` may lack batching rules. Random operators (dropout, sampling) inside a
  vmapped loss are refused by ``vmap`` (its default ``randomness="error"``): sample actions outside the loss.
* Buffers (e.g. BatchNorm running statistics) are not meta-parameters: ``functional_call`` reads them from the module.
* Parameters with ``requires_grad=False`` are not meta-learned either; they are read from the module as well.
* :meth:`GradientMetaLearner.adapt` checks that the inner losses are finite, which reads them back to the host once
  per inner step (a device synchronisation on GPU).
* Task parameters are tied to the θ they were cloned from: after a meta-step (or ``load_state_dict``) they are stale,
  and passing them to ``adapt`` or ``meta_step`` raises ``RuntimeError`` (clone again each meta-iteration).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call, vmap

from metarec.meta.inner_loop import (
    METHODS,
    OPTIMIZERS,
    LossFn,
    Method,
    Params,
    TaskParams,
    adapt_step,
    adapt_step_with_loss,
    check_positive_finite,
    check_scalar_loss,
    learner_ids,
    leaves_with_paths,
    reptile_update,
)
from metarec.parallel import all_reduce_

__all__ = [
    "GradientMetaLearner",
    "LossFn",
    "Method",
    "Params",
    "TaskParams",
    "adapt_step",
    "reptile_update",
]


class GradientMetaLearner:
    """MAML, first-order MAML or Reptile over the parameters of ``module``, vectorised over tasks.

    Args:
        module: the model; its trainable ``nn.Parameter`` s are the meta-parameters θ. It must be vmap-compatible.
        method: ``"maml"`` (second order), ``"fomaml"`` (first order) or ``"reptile"``.
        inner_lr: the inner SGD step size α.
        outer_lr: the optimizer's learning rate; for Reptile with ``optimizer="sgd"`` the interpolation factor ε.
        optimizer: ``"adam"`` or ``"sgd"`` (plain, no momentum) over ``module.parameters()``.

    See the module docstring for how Reptile uses the optimizer.
    """

    def __init__(
        self,
        module: nn.Module,
        method: Method,
        inner_lr: float,
        outer_lr: float,
        optimizer: Literal["adam", "sgd"] = "adam",
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
        if not isinstance(module, nn.Module):
            raise ValueError(f"module must be an nn.Module, got {type(module).__name__}")
        self.module = module
        self.method: Method = method
        self.inner_lr = check_positive_finite("inner_lr", inner_lr)
        self.outer_lr = check_positive_finite("outer_lr", outer_lr)
        self.optimizer_name = optimizer
        self._names = [name for name, p in module.named_parameters() if p.requires_grad]
        if not self._names:
            raise ValueError("module has no trainable parameters (requires_grad=True) to meta-learn")
        trainable = [p for p in module.parameters() if p.requires_grad]
        self.optimizer: torch.optim.Optimizer
        if optimizer == "adam":
            # eps as in CleanRL: a near-zero gradient takes a small step (with 1e-8, float noise in it takes ~lr)
            self.optimizer = torch.optim.Adam(trainable, lr=self.outer_lr, eps=1e-5)
        else:
            self.optimizer = torch.optim.SGD(trainable, lr=self.outer_lr)
        self._id = next(learner_ids)
        self._generation = 0

    # ------------------------------------------------------------------ helpers

    @property
    def generation(self) -> int:
        """The number of meta-steps taken so far (restored by :meth:`load_state_dict`)."""
        return self._generation

    @property
    def meta_params(self) -> Params:
        """The meta-parameters θ by name (the module's own ``nn.Parameter`` objects)."""
        named = dict(self.module.named_parameters())
        return {name: named[name] for name in self._names}

    def _check_task_params(self, params: TaskParams, action: str) -> None:
        if not isinstance(params, TaskParams):
            raise ValueError(f"{action} expects TaskParams from clone()/adapt(), got {type(params).__name__}")
        if params.learner_id != self._id:
            raise ValueError(
                f"cannot {action}: these TaskParams come from a different learner (id {params.learner_id}, this is "
                f"{self._id}) or were cloned before this learner's load_state_dict(); call clone() on this learner"
            )
        if params.generation != self._generation:
            raise RuntimeError(
                f"cannot {action}: these TaskParams are stale: they were cloned at generation {params.generation}, "
                f"before meta-step {params.generation + 1} (the learner has now taken {self._generation}); "
                "call clone() again after every meta_step()"
            )
        theta = self.meta_params
        if set(params.params) != set(theta):
            raise ValueError(
                f"TaskParams.params must hold exactly the meta-parameters {sorted(theta)}, got {sorted(params.params)}"
            )
        for name, p in theta.items():
            q = params.params[name]
            if tuple(q.shape) != (params.num_tasks, *p.shape):
                raise ValueError(
                    f"TaskParams.params[{name!r}] must have shape {(params.num_tasks, *p.shape)}, got {tuple(q.shape)}"
                )

    # ------------------------------------------------------------------ API

    def clone(self, num_tasks: int) -> TaskParams:
        """θ broadcast to ``[num_tasks, *shape]`` for every meta-parameter.

        For MAML and FOMAML the copies are ``expand`` views of θ, so a loss computed from them backpropagates into θ
        (summed over tasks). For Reptile they are detached, independent copies.
        """
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")
        if self.method == "reptile":
            params = {
                name: p.detach().unsqueeze(0).repeat(num_tasks, *([1] * p.dim()))
                for name, p in self.meta_params.items()
            }
        else:
            params = {name: p.unsqueeze(0).expand(num_tasks, *p.shape) for name, p in self.meta_params.items()}
        return TaskParams(params=params, num_tasks=num_tasks, learner_id=self._id, generation=self._generation)

    def adapt(self, params: TaskParams, loss_fn: LossFn, batch: Any, steps: int = 1) -> TaskParams:
        """Take ``steps`` inner SGD steps per task: ``θ'_t = θ_t − inner_lr · ∇ loss_fn(θ_t, batch_t)``.

        Args:
            params: task parameters from :meth:`clone` (or an earlier ``adapt``) of this learner, this generation.
            loss_fn: ``loss_fn(params_one_task, batch_one_task) -> scalar tensor``, the loss of one task.
            batch: a pytree of tensors whose leaves all have leading dimension ``params.num_tasks``. The same batch
                is used for every step.
            steps: the number of inner steps (>= 1).

        Returns:
            New :class:`TaskParams` with the adapted parameters. For MAML they stay differentiable with respect to θ
            through the inner gradients; for FOMAML only through the identity term; for Reptile not at all.

        Raises:
            ValueError: on a bad ``steps``, a batch leaf whose leading dimension is not ``num_tasks``, or a loss that
                is not a finite scalar (the message names the offending tasks).
            RuntimeError: on stale task parameters (cloned before a meta-step).
        """
        self._check_task_params(params, "adapt")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        for path, leaf in leaves_with_paths(batch, "batch"):
            if leaf.dim() == 0 or leaf.shape[0] != params.num_tasks:
                got = "a 0-dim tensor" if leaf.dim() == 0 else f"leading dimension {leaf.shape[0]}"
                raise ValueError(
                    f"{path} has {got} but the task parameters have num_tasks={params.num_tasks}; every batch leaf "
                    "needs a leading task dimension of that size"
                )

        first_order = self.method != "maml"
        lr = self.inner_lr

        def one_task(p: Params, b: Any) -> tuple[Params, torch.Tensor]:
            return adapt_step_with_loss(loss_fn, p, b, lr, first_order)

        step_all = vmap(one_task)
        current = params.params
        with torch.no_grad() if self.method == "reptile" else contextlib.nullcontext():
            for step in range(steps):
                current, losses = step_all(current, batch)
                bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
                if bad:
                    raise ValueError(
                        f"loss_fn returned a non-finite loss at inner step {step + 1} for task(s) {bad} "
                        f"(values {[losses[i].item() for i in bad[:5]]})"
                    )
        return TaskParams(
            params=current,
            num_tasks=params.num_tasks,
            learner_id=self._id,
            generation=self._generation,
            inner_steps=params.inner_steps + steps,
        )

    def functional(self) -> Callable[..., Any]:
        """``f(params_one_task, *args, **kwargs)``: the module's forward with the given parameters.

        Use it with ``vmap`` to evaluate every task's parameters at once:
        ``torch.func.vmap(learner.functional())(task_params.params, obs_T)``.
        """
        module = self.module

        def f(params: Params, *args: Any, **kwargs: Any) -> Any:
            return functional_call(module, params, args, kwargs)

        return f

    def meta_step(self, params: TaskParams, query_loss: torch.Tensor | None = None) -> dict[str, float]:
        """Update θ from the adapted task parameters.

        Args:
            params: the adapted task parameters (this learner, this generation).
            query_loss: MAML / FOMAML: the mean over tasks of the post-adaptation loss, computed from ``params``;
                it is backpropagated to θ and the optimizer steps. Reptile: must be ``None``.

        Returns:
            MAML / FOMAML: ``{"meta_loss", "meta_grad_norm"}``; Reptile: ``{"reptile_step_norm"}`` (the norm of the
            change of θ).

        Raises:
            ValueError: ``query_loss`` missing (MAML / FOMAML) or given (Reptile), not a scalar, or not finite.
            RuntimeError: stale ``params``, a ``query_loss`` that does not depend on θ, or a non-finite
                meta-gradient. θ is left unchanged when anything is raised.
        """
        self._check_task_params(params, "meta_step")
        if self.method == "reptile":
            if query_loss is not None:
                raise ValueError(
                    "reptile's meta_step takes no query_loss (it moves θ toward the adapted parameters); pass None"
                )
            return self._reptile_step(params)

        if query_loss is None:
            raise ValueError(f"{self.method} meta_step needs a query_loss (the mean post-adaptation loss over tasks)")
        check_scalar_loss(query_loss, "query_loss")
        if not bool(torch.isfinite(query_loss)):
            raise ValueError(f"query_loss is not finite ({query_loss.item()})")
        if not query_loss.requires_grad:
            raise RuntimeError(
                "query_loss does not depend on θ (it does not require grad): compute it from the adapted "
                "TaskParams, with autograd enabled"
            )
        theta = self.meta_params
        self.optimizer.zero_grad(set_to_none=True)
        query_loss.backward()
        grads = [p.grad for p in theta.values() if p.grad is not None]
        all_reduce_(grads, average=True)  # data-parallel over tasks: each process held a share of them
        if not grads:
            raise RuntimeError(
                "no gradient reached the module's parameters: query_loss does not depend on θ; compute it from "
                "TaskParams cloned from this learner"
            )
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if not bool(torch.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise RuntimeError("the meta-gradient is not finite; θ was not updated")
        self.optimizer.step()
        self._generation += 1
        return {"meta_loss": float(query_loss.detach().item()), "meta_grad_norm": float(grad_norm.item())}

    def _reptile_step(self, params: TaskParams) -> dict[str, float]:
        theta = self.meta_params
        adapted = {name: q.detach() for name, q in params.params.items()}
        with torch.no_grad():
            before = {name: p.detach().clone() for name, p in theta.items()}
            # the mean over tasks, over every process's share of them
            mean = {name: q.mean(dim=0) for name, q in adapted.items()}
            all_reduce_(list(mean.values()), average=True)
            if self.optimizer_name == "sgd":
                epsilon = float(self.optimizer.param_groups[0]["lr"])
                new = reptile_update(before, {name: m[None] for name, m in mean.items()}, epsilon)
                for name, p in theta.items():
                    p.copy_(new[name])
            else:
                for name, p in theta.items():
                    # The pseudo-gradient -(mean_t θ'_t - θ): a descent step on it moves θ toward the adapted mean.
                    p.grad = before[name] - mean[name]
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            step_norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p - before[name]) for name, p in theta.items()])
            )
        self._generation += 1
        return {"reptile_step_norm": float(step_norm.item())}

    def state_dict(self) -> dict[str, Any]:
        """Module and optimizer state, plus the method, learning rates and generation, for checkpoints."""
        return {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method,
            "optimizer_name": self.optimizer_name,
            "inner_lr": self.inner_lr,
            "outer_lr": self.outer_lr,
            "generation": self._generation,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Outstanding TaskParams of this learner become invalid."""
        for key in ("method", "optimizer_name"):
            mine = getattr(self, key)
            if state.get(key, mine) != mine:
                raise ValueError(f"checkpoint {key} is {state[key]!r} but this learner uses {mine!r}")
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.inner_lr = check_positive_finite("inner_lr", state.get("inner_lr", self.inner_lr))
        self.outer_lr = check_positive_finite("outer_lr", state.get("outer_lr", self.outer_lr))
        self._generation = int(state.get("generation", 0))
        # θ changed under any TaskParams cloned before: give the learner a fresh identity so they are refused.
        self._id = next(learner_ids)
