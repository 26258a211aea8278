"""A trained recommender as a file that scores candidates and picks a slate with torch alone (``torch.export``),
with onnxruntime (ONNX), or as its weights (a state dict).

A recommender says what to export (:meth:`~metarec.agents.base.Recommender.export_module`): a feed-forward
policy is a :class:`SlateScorer`, and a recommender with a memory (RL²) a module that takes the memory as
inputs and returns the next one. The exported program takes the observation the env gives (one input per key
of its observation space, batch first) and returns the candidates' ``scores`` ``[B, N]`` and the deterministic
``slate`` ``[B, K]`` (the K best scores in decreasing order: the policy's most probable slate). A policy trained
with the population's item statistics also takes ``item_stats`` ``[B, N, 3]``: each candidate's logged
impressions, clicks and summed engagement.

Every export module has ``keys``, ``item_stats``, ``extra_names()`` and ``extra_inputs(batch)`` (the inputs after
the observation and the item statistics, such as a memory), ``output_names()``, ``fixed_batch`` (whether the
users of a call must be ``batch`` users) and ``about()`` (what the file says of itself beyond its inputs).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metarec.envs.vector import recommender_observation, recommender_space
from metarec.io import atomic_save, atomic_write

FORMATS = ("torch-export", "onnx", "state-dict")
SUFFIXES = {"torch-export": ".pt2", "onnx": ".onnx", "state-dict": ".pt"}


def with_item_stats(candidates: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """The candidates with the three features a policy trained with item statistics reads, from the raw
    ``[B, N, 3]`` impressions, clicks and summed engagement."""
    from metarec.envs.task_batch import item_stat_features

    return torch.cat([candidates.float(), item_stat_features(torch, stats.float())], dim=-1)


class SlateScorer(nn.Module):
    """A feed-forward policy ``net`` (``net(observation) -> (logits, value)``): its scores and deterministic slate,
    from the observation tensors in ``keys`` order (and the raw item statistics, with ``item_stats``)."""

    fixed_batch = False

    def __init__(self, net: nn.Module, keys: list[str], slate_size: int, item_stats: bool = False) -> None:
        super().__init__()
        self.net, self.keys, self.slate_size, self.item_stats = net, list(keys), slate_size, item_stats

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        observation = dict(zip(self.keys, tensors[: len(self.keys)], strict=True))
        if self.item_stats:
            observation["candidates"] = with_item_stats(observation["candidates"], tensors[len(self.keys)])
        logits, _ = self.net(observation)
        return logits, torch.topk(logits, self.slate_size, dim=-1).indices

    def extra_names(self) -> list[str]:
        return []

    def extra_inputs(self, batch: int) -> list[torch.Tensor]:
        return []

    def output_names(self) -> list[str]:
        return ["scores", "slate"]

    def about(self) -> dict[str, Any]:
        return {"kind": "slate-scorer"}


def input_names(module: nn.Module) -> list[str]:
    return [*module.keys, *(["item_stats"] if module.item_stats else []), *module.extra_names()]


def example_inputs(module: nn.Module, env: Any, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs for one call on ``batch`` users: ``env``'s first observation, no item statistics yet, and what
    the module adds (a new user's memory, say)."""
    observation = recommender_observation(env, env.reset(seed=seed)[0])
    tensors = [observation[key][:batch].cpu() for key in module.keys]
    if module.item_stats:
        tensors.append(torch.zeros(batch, observation["candidates"].shape[1], 3))
    return (*tensors, *module.extra_inputs(batch))


def exportable(recommender: Any, env: Any) -> nn.Module:
    """``recommender``'s export module for ``env``'s observations: a copy on the CPU (the recommender itself is
    left as it was, on its device), in evaluation mode and without gradients (a program that serves)."""
    module = copy.deepcopy(recommender.export_module(sorted(recommender_space(env).spaces)))
    return module.cpu().eval().requires_grad_(False)


def export(recommender: Any, env: Any, out: str | Path, format: str, batch: int = 8) -> dict[str, Any]:
    """Writes ``recommender`` (for ``env``'s observations) to ``out`` in ``format`` and returns what the file
    says of itself (also written into it: ``about.json`` in a ``.pt2``, the ``metarec`` metadata property of an
    ONNX model). The batch axis is dynamic unless the module needs a fixed one."""
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    module = exportable(recommender, env)
    # torch.export makes a traced batch of 1 a constant: a dynamic batch is traced with two users at least
    inputs = example_inputs(module, env, batch if module.fixed_batch else max(batch, 2))
    with torch.no_grad():
        outputs = module(*inputs)
    names = input_names(module)
    named = list(zip(names, inputs, strict=True))
    about = {"metarec_export": 1, "agent": getattr(recommender, "name", type(recommender).__name__),
             **module.about(), "format": format, "inputs": names, "outputs": module.output_names(),
             "batch": batch if module.fixed_batch else "dynamic", "slate_size": int(outputs[1].shape[1]),
             "input_shapes": {n: [*t.shape[1:]] for n, t in named},
             "input_dtypes": {n: str(t.dtype).removeprefix("torch.") for n, t in named}}  # fmt: skip
    out = Path(out)  # every format is written next to it and renamed over it: a failed export leaves it as it was
    if format == "state-dict":
        atomic_save({"about": json.dumps(about), "state_dict": module.state_dict()}, out)
        return about
    dims = None if module.fixed_batch else (tuple({0: torch.export.Dim("batch", min=1)} for _ in inputs),)
    if format == "torch-export":
        program = torch.export.export(module, inputs, dynamic_shapes=dims, strict=False)
        atomic_write(out, lambda tmp: torch.export.save(program, tmp, extra_files={"about.json": json.dumps(about)}))
        return about
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ImportError("format onnx: needs onnx and onnxscript (pip install 'metarec[export]')") from None
    program = torch.onnx.export(module, inputs, dynamo=True, input_names=names, output_names=about["outputs"],
                                dynamic_shapes=dims)  # fmt: skip
    program.model.metadata_props["metarec"] = json.dumps(about)
    atomic_write(out, lambda tmp: program.save(str(tmp)))
    return about
