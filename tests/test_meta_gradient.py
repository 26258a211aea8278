"""Functional meta-learning on torch.func: MAML gradients against finite differences, FOMAML, Reptile, misuse."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.func import vmap

from metarec.meta.gradient import GradientMetaLearner, Params, TaskParams, adapt_step, reptile_update

DT = torch.float64
T = 3  # tasks in the small problems
N = 6  # samples per task


def tiny_mlp(seed: int = 0, hidden: int = 4) -> nn.Module:
    """A 2 -> hidden -> 1 tanh MLP in float64, built without touching the global default dtype."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1)).to(DT)


def regression_data(seed: int, tasks: int = T, n: int = N) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Support and query batches ``(x [T, n, 2], y [T, n])`` of a nonlinear per-task regression."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(tasks, 1, 2, generator=g, dtype=DT)
    x = torch.randn(tasks, 2 * n, 2, generator=g, dtype=DT)
    y = torch.sin((x * w).sum(-1)) + 0.1 * torch.randn(tasks, 2 * n, generator=g, dtype=DT)
    return (x[:, :n], y[:, :n]), (x[:, n:], y[:, n:])


def mse_loss(learner: GradientMetaLearner) -> Callable[[Params, Any], torch.Tensor]:
    f = learner.functional()

    def loss(params: Params, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return ((f(params, x).squeeze(-1) - y) ** 2).mean()

    return loss


def query_loss(learner: GradientMetaLearner, support: Any, query: Any, steps: int) -> tuple[TaskParams, torch.Tensor]:
    """Clone, adapt on the support batch, and return the adapted params with the mean query loss."""
    loss = mse_loss(learner)
    adapted = learner.adapt(learner.clone(T), loss, support, steps=steps)
    return adapted, vmap(loss)(adapted.params, query).mean()


def flat_grad(learner: GradientMetaLearner) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in learner.meta_params.values()])


# ---------------------------------------------------------------------------------------------------- 1. MAML vs FD


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_meta_gradient_matches_central_finite_differences(steps: int) -> None:
    learner = GradientMetaLearner(tiny_mlp(), "maml", inner_lr=0.5, outer_lr=0.1, optimizer="sgd")
    support, query = regression_data(seed=1)
    theta = list(learner.meta_params.values())

    h = 1e-6
    fd = []
    with torch.no_grad():  # torch.func.grad ignores the outer no_grad, so the inner steps still happen
        for p in theta:
            flat = p.view(-1)
            for i in range(flat.numel()):
                orig = flat[i].item()
                flat[i] = orig + h
                plus = query_loss(learner, support, query, steps)[1].item()
                flat[i] = orig - h
                minus = query_loss(learner, support, query, steps)[1].item()
                flat[i] = orig
                fd.append((plus - minus) / (2 * h))
    fd_grad = torch.tensor(fd, dtype=DT)

    adapted, loss = query_loss(learner, support, query, steps)
    stats = learner.meta_step(adapted, loss)  # SGD keeps .grad after the step
    analytic = flat_grad(learner)

    assert analytic.numel() == 17
    rel = (analytic - fd_grad).norm() / fd_grad.norm()
    assert rel < 1e-6, f"relative error {rel:.3e}"
    torch.testing.assert_close(analytic, fd_grad, rtol=1e-5, atol=1e-8)
    assert stats["meta_grad_norm"] == pytest.approx(analytic.norm().item(), rel=1e-12)
    assert stats["meta_loss"] == pytest.approx(loss.item())


# ---------------------------------------------------------------------------------------------------- 2. FOMAML


def _meta_grad(method: str, module: nn.Module, inner: Callable, outer: Callable, support: Any, query: Any) -> Any:
    learner = GradientMetaLearner(module, method, inner_lr=0.5, outer_lr=0.1, optimizer="sgd")  # type: ignore[arg-type]
    f = learner.functional()
    adapted = learner.adapt(learner.clone(T), lambda p, b: inner(f, p, b), support, steps=2)
    loss = vmap(lambda p, b: outer(f, p, b))(adapted.params, query).mean()
    learner.meta_step(adapted, loss)
    return flat_grad(learner), adapted


def _linear_inner(f: Callable, params: Params, batch: Any) -> torch.Tensor:
    """A policy-gradient-like surrogate that is linear in the parameters of a linear model: zero Hessian."""
    x, r = batch
    return -(f(params, x).squeeze(-1) * r).mean()


def _mse(f: Callable, params: Params, batch: Any) -> torch.Tensor:
    x, y = batch
    return ((f(params, x).squeeze(-1) - y) ** 2).mean()


def test_fomaml_equals_maml_when_the_inner_hessian_vanishes() -> None:
    torch.manual_seed(3)
    linear = nn.Linear(2, 1).to(DT)
    support, query = regression_data(seed=2)
    maml, _ = _meta_grad("maml", copy.deepcopy(linear), _linear_inner, _mse, support, query)
    fomaml, _ = _meta_grad("fomaml", copy.deepcopy(linear), _linear_inner, _mse, support, query)
    assert maml.abs().max() > 1e-3  # a real gradient, not two zeros
    torch.testing.assert_close(fomaml, maml, rtol=1e-12, atol=1e-14)


def test_fomaml_differs_from_maml_on_a_nonlinear_problem_and_is_the_query_gradient_at_adapted_params() -> None:
    support, query = regression_data(seed=4)
    maml, _ = _meta_grad("maml", tiny_mlp(5), _mse, _mse, support, query)
    fomaml, adapted = _meta_grad("fomaml", tiny_mlp(5), _mse, _mse, support, query)
    # maml silently becoming first order would make these equal.
    assert (maml - fomaml).norm() / maml.norm() > 1e-2

    # First order: the meta-gradient is the sum over tasks of (1/T) ∇ query loss at the adapted parameters.
    f = tiny_mlp(5)
    learner = GradientMetaLearner(f, "fomaml", 0.5, 0.1)
    fn = learner.functional()
    expected = torch.zeros_like(fomaml)
    for t in range(T):
        at = {k: v[t].detach().requires_grad_() for k, v in adapted.params.items()}
        loss = _mse(fn, at, (query[0][t], query[1][t])) / T
        expected += torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(at.values()))])
    torch.testing.assert_close(fomaml, expected, rtol=1e-10, atol=1e-12)


def test_adapt_graph_depth_per_method() -> None:
    support, _ = regression_data(seed=6)
    for method, needs_grad in (("maml", True), ("fomaml", True), ("reptile", False)):
        learner = GradientMetaLearner(tiny_mlp(), method, 0.1, 0.1)  # type: ignore[arg-type]
        adapted = learner.adapt(learner.clone(T), mse_loss(learner), support, steps=2)
        assert all(p.requires_grad == needs_grad for p in adapted.params.values()), method
        assert adapted.inner_steps == 2


# ---------------------------------------------------------------------------------------------------- 3. Reptile


def test_reptile_update_is_exactly_epsilon_times_mean_difference() -> None:
    # Dyadic values with few significant bits: every operation below is exact in float64.
    g = torch.Generator().manual_seed(0)
    theta = {
        "w": torch.randint(-64, 64, (3, 2), generator=g).to(DT) / 8,
        "b": torch.randint(-64, 64, (2,), generator=g).to(DT) / 8,
    }
    adapted = {k: v + torch.randint(-64, 64, (4, *v.shape), generator=g).to(DT) / 16 for k, v in theta.items()}
    eps = 0.25
    new = reptile_update(theta, adapted, eps)
    for k in theta:
        assert torch.equal(new[k] - theta[k], eps * (adapted[k] - theta[k]).mean(dim=0))
        assert not torch.equal(new[k], theta[k])


def test_reptile_meta_step_with_sgd_interpolates_exactly() -> None:
    learner = GradientMetaLearner(tiny_mlp(), "reptile", inner_lr=0.25, outer_lr=0.5, optimizer="sgd")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in learner.meta_params.values():
            p.copy_(torch.randint(-32, 32, p.shape, generator=g).to(DT) / 8)
    theta = {k: p.detach().clone() for k, p in learner.meta_params.items()}
    cloned = learner.clone(4)  # a power of two, so the mean over tasks is exact too
    adapted = dataclasses.replace(
        cloned,
        params={k: v + torch.randint(-32, 32, v.shape, generator=g).to(DT) / 16 for k, v in cloned.params.items()},
    )
    stats = learner.meta_step(adapted)
    moved = []
    for k, p in learner.meta_params.items():
        diff = 0.5 * (adapted.params[k] - theta[k]).mean(dim=0)
        assert torch.equal(p.detach() - theta[k], diff), k
        moved.append(diff.reshape(-1))
    assert stats["reptile_step_norm"] == pytest.approx(torch.cat(moved).norm().item(), rel=1e-12)

    # On real adaptations (not dyadic) it is the helper, bit for bit.
    support, _ = regression_data(seed=7)
    theta = {k: p.detach().clone() for k, p in learner.meta_params.items()}
    adapted = learner.adapt(learner.clone(T), mse_loss(learner), support, steps=3)
    learner.meta_step(adapted)
    expected = reptile_update(theta, adapted.params, 0.5)
    for k, p in learner.meta_params.items():
        assert torch.equal(p.detach(), expected[k]), k


def test_reptile_with_adam_steps_toward_the_adapted_mean() -> None:
    learner = GradientMetaLearner(tiny_mlp(), "reptile", inner_lr=0.25, outer_lr=0.01, optimizer="adam")
    support, _ = regression_data(seed=8)
    theta = {k: p.detach().clone() for k, p in learner.meta_params.items()}
    adapted = learner.adapt(learner.clone(T), mse_loss(learner), support)
    learner.meta_step(adapted)
    for k, p in learner.meta_params.items():
        direction = adapted.params[k].mean(dim=0) - theta[k]
        step = p.detach() - theta[k]
        # Adam's first step is lr * g / (|g| + eps) (eps 1e-5): toward the mean, never away; about lr
        # wherever the pseudo-gradient is well above eps.
        mask = direction.abs() > 1e-6
        assert torch.all(torch.sign(step[mask]) == torch.sign(direction[mask])), k
        large = direction.abs() > 1e-2
        assert int(large.sum()) > 0
        torch.testing.assert_close(step[large].abs(), torch.full_like(step[large], 0.01), rtol=1e-3, atol=0)


# ---------------------------------------------------------------------------------------------------- 4. vmap vs loop


@pytest.mark.parametrize("method", ["maml", "fomaml", "reptile"])
def test_vmap_over_tasks_equals_a_loop_of_adapt_step(method: str) -> None:
    learner = GradientMetaLearner(tiny_mlp(hidden=8), method, inner_lr=0.3, outer_lr=0.1, optimizer="sgd")  # type: ignore[arg-type]
    loss = mse_loss(learner)
    support, query = regression_data(seed=9)
    steps = 2
    adapted = learner.adapt(learner.clone(T), loss, support, steps=steps)

    theta = learner.meta_params
    looped: list[Params] = []
    for t in range(T):
        p = dict(theta) if method != "reptile" else {k: v.detach() for k, v in theta.items()}
        batch_t = (support[0][t], support[1][t])
        for _ in range(steps):
            p = adapt_step(loss, p, batch_t, lr=0.3, first_order=method != "maml")
        looped.append(p)
    for k in theta:
        torch.testing.assert_close(adapted.params[k], torch.stack([p[k] for p in looped]), rtol=1e-12, atol=1e-13)

    if method != "reptile":  # the meta-gradients through vmap and through the loop agree too
        loop_loss = sum(loss(p, (query[0][t], query[1][t])) for t, p in enumerate(looped)) / T
        loop_grad = torch.autograd.grad(loop_loss, list(theta.values()))
        learner.meta_step(adapted, vmap(loss)(adapted.params, query).mean())
        for g_loop, p in zip(loop_grad, theta.values(), strict=True):
            torch.testing.assert_close(p.grad, g_loop, rtol=1e-10, atol=1e-13)


def test_functional_evaluates_each_tasks_own_parameters() -> None:
    learner = GradientMetaLearner(tiny_mlp(), "maml", 0.1, 0.1)
    support, _ = regression_data(seed=10)
    adapted = learner.adapt(learner.clone(T), mse_loss(learner), support)
    out = vmap(learner.functional())(adapted.params, support[0])
    assert out.shape == (T, N, 1)
    for t in range(T):
        ref = torch.func.functional_call(learner.module, {k: v[t] for k, v in adapted.params.items()}, (support[0][t],))
        torch.testing.assert_close(out[t], ref, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------------- 5. misuse


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "anil"}, "method must be one of"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"inner_lr": 0.0}, "inner_lr must be a positive finite"),
        ({"inner_lr": -0.1}, "inner_lr must be a positive finite"),
        ({"inner_lr": math.nan}, "inner_lr must be a positive finite"),
        ({"outer_lr": math.inf}, "outer_lr must be a positive finite"),
        ({"outer_lr": "0.1"}, "outer_lr must be a positive finite"),
    ],
)
def test_bad_constructor_arguments_are_rejected(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"method": "maml", "inner_lr": 0.1, "outer_lr": 0.1, "optimizer": "adam", **kwargs}
    with pytest.raises(ValueError, match=match):
        GradientMetaLearner(tiny_mlp(), **args)


def test_module_without_trainable_parameters_is_rejected() -> None:
    with pytest.raises(ValueError, match="no trainable parameters"):
        GradientMetaLearner(nn.Tanh(), "maml", 0.1, 0.1)


@pytest.mark.parametrize("num_tasks", [0, -2, 1.5])
def test_clone_rejects_bad_num_tasks(num_tasks: Any) -> None:
    learner = GradientMetaLearner(tiny_mlp(), "maml", 0.1, 0.1)
    with pytest.raises(ValueError, match="num_tasks must be an integer >= 1"):
        learner.clone(num_tasks)


@pytest.mark.parametrize("steps", [0, -1])
def test_adapt_rejects_bad_steps(steps: int) -> None:
    learner = GradientMetaLearner(tiny_mlp(), "maml", 0.1, 0.1)
    support, _ = regression_data(seed=0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        learner.adapt(learner.clone(T), mse_loss(learner), support, steps=steps)


def test_adapt_names_the_batch_leaf_with_the_wrong_task_dimension() -> None:
    learner = GradientMetaLearner(tiny_mlp(), "fomaml", 0.1, 0.1)
    (x, y), _ = regression_data(seed=0)

    def loss(p: Params, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return mse_loss(learner)(p, (b["obs"], b["target"]))

    with pytest.raises(ValueError, match=r"batch\['target'\] has leading dimension 2 .*num_tasks=3"):
        learner.adapt(learner.clone(T), loss, {"obs": x, "target": y[:2]})
    with pytest.raises(ValueError, match=r"batch\[1\] has a 0-dim tensor .*num_tasks=3"):
        learner.adapt(learner.clone(T), mse_loss(learner), (x, torch.tensor(1.0)))
    with pytest.raises(ValueError, match=r"batch\[1\]: batch leaves must be tensors"):
        learner.adapt(learner.clone(T), mse_loss(learner), (x, 3))


def test_adapt_rejects_non_scalar_and_non_finite_losses() -> None:
    learner = GradientMetaLearner(tiny_mlp(), "maml", 0.1, 0.1)
    f = learner.functional()
    support, _ = regression_data(seed=0)

    def per_sample(p: Params, b: Any) -> torch.Tensor:
        return (f(p, b[0]).squeeze(-1) - b[1]) ** 2

    with pytest.raises(ValueError, match=r"scalar \(0-dim\) tensor for one task, got shape \(6,\)"):
        learner.adapt(learner.clone(T), per_sample, support)

    x, y = support
    y = y.clone()
    y[1, 0] = math.nan
    with pytest.raises(ValueError, match=r"non-finite loss at inner step 1 for task\(s\) \[1\]"):
        learner.adapt(learner.clone(T), mse_loss(learner), (x, y))


def test_meta_step_checks_query_loss_presence_per_method() -> None:
    support, query = regression_data(seed=0)
    for method in ("maml", "fomaml"):
        learner = GradientMetaLearner(tiny_mlp(), method, 0.1, 0.1)  # type: ignore[arg-type]
        adapted = learner.adapt(learner.clone(T), mse_loss(learner), support)
        with pytest.raises(ValueError, match=f"{method} meta_step needs a query_loss"):
            learner.meta_step(adapted)
        with pytest.raises(ValueError, match="query_loss must return a scalar"):
            learner.meta_step(adapted, vmap(mse_loss(learner))(adapted.params, query))
    reptile = GradientMetaLearner(tiny_mlp(), "reptile", 0.1, 0.1)
    adapted = reptile.adapt(reptile.clone(T), mse_loss(reptile), support)
    with pytest.raises(ValueError, match="reptile's meta_step takes no query_loss"):
        reptile.meta_step(adapted, torch.tensor(1.0, dtype=DT))


def test_meta_step_refuses_a_query_loss_that_does_not_reach_theta() -> None:
    learner = GradientMetaLearner(tiny_mlp(), "maml", 0.1, 0.1)
    support, _ = regression_data(seed=0)
    adapted = learner.adapt(learner.clone(T), mse_loss(learner), support)
    before = {k: p.detach().clone() for k, p in learner.meta_params.items()}
    with pytest.raises(RuntimeError, match="does not depend on θ"):
        learner.meta_step(adapted, torch.tensor(0.5, dtype=DT))
    other = torch.ones((), dtype=DT, requires_grad=True)
    with pytest.raises(RuntimeError, match="no gradient reached the module's parameters"):
        learner.meta_step(adapted, other * 2.0)
    for k, p in learner.meta_params.items():
        assert torch.equal(p.detach(), before[k])
    assert learner.generation == 0


def test_task_params_from_another_learner_are_refused() -> None:
    a = GradientMetaLearner(tiny_mlp(), "maml", 0.1, 0.1)
    b = GradientMetaLearner(tiny_mlp(), "maml", 0.1, 0.1)
    support, query = regression_data(seed=0)
    from_a = a.clone(T)
    with pytest.raises(ValueError, match="different learner"):
        b.adapt(from_a, mse_loss(b), support)
    adapted = a.adapt(from_a, mse_loss(a), support)
    with pytest.raises(ValueError, match="different learner"):
        b.meta_step(adapted, vmap(mse_loss(a))(adapted.params, query).mean())


@pytest.mark.parametrize("method", ["maml", "reptile"])
def test_stale_task_params_are_refused_after_a_meta_step(method: str) -> None:
    learner = GradientMetaLearner(tiny_mlp(), method, 0.1, 0.1)  # type: ignore[arg-type]
    loss = mse_loss(learner)
    support, query = regression_data(seed=0)
    old = learner.clone(T)
    adapted = learner.adapt(old, loss, support)
    learner.meta_step(adapted, None if method == "reptile" else vmap(loss)(adapted.params, query).mean())
    with pytest.raises(RuntimeError, match="stale: they were cloned at generation 0, before meta-step 1"):
        learner.adapt(old, loss, support)
    with pytest.raises(RuntimeError, match="before meta-step 1"):
        learner.meta_step(adapted, None if method == "reptile" else torch.tensor(1.0, requires_grad=True))
    fresh = learner.adapt(learner.clone(T), loss, support)  # a new clone works
    assert fresh.generation == learner.generation == 1


# ---------------------------------------------------------------------------------------------------- 6. determinism


@pytest.mark.parametrize(("method", "optimizer"), [("maml", "adam"), ("fomaml", "sgd"), ("reptile", "adam")])
def test_same_seed_and_data_give_bit_identical_parameters(method: str, optimizer: str) -> None:
    def run() -> dict[str, torch.Tensor]:
        learner = GradientMetaLearner(tiny_mlp(seed=11, hidden=8), method, 0.2, 0.05, optimizer)  # type: ignore[arg-type]
        loss = mse_loss(learner)
        for i in range(4):
            support, query = regression_data(seed=100 + i)
            adapted = learner.adapt(learner.clone(T), loss, support, steps=2)
            learner.meta_step(adapted, None if method == "reptile" else vmap(loss)(adapted.params, query).mean())
        return {k: p.detach().clone() for k, p in learner.meta_params.items()}

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["0.weight"], tiny_mlp(seed=11, hidden=8)[0].weight)


def test_state_dict_round_trip_resumes_identically_and_invalidates_old_task_params() -> None:
    def step(learner: GradientMetaLearner, seed: int) -> None:
        loss = mse_loss(learner)
        support, query = regression_data(seed=seed)
        adapted = learner.adapt(learner.clone(T), loss, support)
        learner.meta_step(adapted, vmap(loss)(adapted.params, query).mean())

    a = GradientMetaLearner(tiny_mlp(seed=1), "maml", 0.2, 0.05, "adam")
    for s in range(2):
        step(a, s)
    b = GradientMetaLearner(tiny_mlp(seed=2), "maml", 0.2, 0.05, "adam")
    outstanding = b.clone(T)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.generation == 2
    with pytest.raises(ValueError, match="load_state_dict"):
        b.adapt(outstanding, mse_loss(b), regression_data(seed=0)[0])
    for s in range(2, 4):
        step(a, s)
        step(b, s)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.meta_params.values(), b.meta_params.values(), strict=True))
    with pytest.raises(ValueError, match="method is 'maml'"):
        GradientMetaLearner(tiny_mlp(), "reptile", 0.1, 0.1).load_state_dict(a.state_dict())


# ---------------------------------------------------------------------------------------------------- 7. learning


def _linear_tasks(g: torch.Generator, tasks: int, shots: int) -> tuple[Any, Any]:
    """Tasks y = a·x + b with a, b ~ U(-2, 2); support and query of ``shots`` points each."""
    a = torch.empty(tasks, 1, 1).uniform_(-2, 2, generator=g)
    b = torch.empty(tasks, 1, 1).uniform_(-2, 2, generator=g)
    x = torch.empty(tasks, 2 * shots, 1).uniform_(-1, 1, generator=g)
    y = a * x + b
    return (x[:, :shots], y[:, :shots]), (x[:, shots:], y[:, shots:])


def test_maml_lowers_post_adaptation_loss_on_held_out_tasks() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
    learner = GradientMetaLearner(module, "maml", inner_lr=0.05, outer_lr=1e-2, optimizer="adam")
    f = learner.functional()

    def loss(params: Params, batch: Any) -> torch.Tensor:
        x, y = batch
        return ((f(params, x) - y) ** 2).mean()

    held_support, held_query = _linear_tasks(torch.Generator().manual_seed(12345), tasks=64, shots=10)

    def evaluate() -> tuple[float, float]:
        cloned = learner.clone(64)
        with torch.no_grad():
            pre = vmap(loss)(cloned.params, held_query).mean().item()
            post = vmap(loss)(learner.adapt(cloned, loss, held_support).params, held_query).mean().item()
        return pre, post

    _, post_before = evaluate()
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        support, query = _linear_tasks(g, tasks=16, shots=10)
        adapted = learner.adapt(learner.clone(16), loss, support)
        learner.meta_step(adapted, vmap(loss)(adapted.params, query).mean())
    pre_after, post_after = evaluate()

    assert post_after < 0.75 * post_before, (post_before, post_after)
    assert post_after < 0.5 * pre_after, "one inner step should do much of the work after meta-training"
