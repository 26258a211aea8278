"""Where a batched step's time goes: torch's profiler over a few steps of a vector env, and the same steps with
the user model's step and oracle compiled by ``torch.compile``. Prints one JSON line.

    python benchmarks/step_profile.py --device cuda --users 1000000
    python benchmarks/step_profile.py --users 100000 --steps 5          # on the CPU

The line holds the wall time per step, the operators that take the most device time (CUDA kernels on a GPU,
CPU time on a CPU) with their calls per step, how many kernels a step launches, and the share of the wall time
the device was busy. Unless ``--no-compile`` it also times the step with the model's ``step`` and ``oracle``
compiled (``torch.compile``), compares five of its steps with the eager step's from the same seed and slates, and
says so when compiling fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import gymnasium as gym
import torch
from torch.profiler import ProfilerActivity, profile

import metarec  # noqa: F401  (registers the environments)
from metarec.allocator import tune_allocator


def make_env(args: argparse.Namespace) -> Any:
    extra = {"compact_observation": True} if args.compact_observation else {}
    return gym.make_vec(
        args.env, num_envs=args.users, vectorization_mode="vector_entry_point", device=args.device,
        ground_truth=not args.no_ground_truth, array_backend="torch", **extra,
    )  # fmt: skip


def timed(env: Any, actions: torch.Tensor, steps: int) -> float:
    """Seconds per step over ``steps`` steps (after they all finished on the device)."""
    sync(env)
    start = time.perf_counter()
    for t in range(steps):
        env.step(actions[t % actions.shape[0]])
    sync(env)
    return (time.perf_counter() - start) / steps


def sync(env: Any) -> None:
    if env.device.type == "cuda":
        torch.cuda.synchronize()


def top_operators(prof: Any, steps: int, on_gpu: bool, count: int) -> tuple[list[dict], float, int]:
    """The ``count`` operators with the most self time on the device (the CPU's time on a CPU), and on a GPU its
    busy seconds per step and the kernels launched per step."""
    rows = []
    busy = 0.0
    kernels = 0
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "self_cuda_time_total", 0)
        own = device_us if on_gpu else event.self_cpu_time_total
        if on_gpu and getattr(event, "device_type", None) is not None and "CUDA" in str(event.device_type):
            busy += device_us
            kernels += event.count
        rows.append((own, event))
    rows.sort(key=lambda pair: pair[0], reverse=True)
    top = [
        {"op": event.key[:80], "ms_per_step": round(own / 1e3 / steps, 3), "calls_per_step": event.count / steps}
        for own, event in rows[:count]
        if own > 0
    ]
    return top, busy / 1e6 / steps, round(kernels / steps)


def compiled(args: argparse.Namespace, actions: torch.Tensor) -> dict[str, Any]:
    """The step with the model's ``step`` and ``oracle`` compiled: how long it takes to compile, its speed, and how
    far it strays from the eager step on the same seed and slates (compiled code may round otherwise)."""
    eager, fast = make_env(args), make_env(args)
    model = fast.unwrapped.model
    try:
        model.step = torch.compile(model.step, dynamic=False)
        model.oracle = torch.compile(model.oracle, dynamic=False)
        eager.reset(seed=1)
        fast.reset(seed=1)
        start = time.perf_counter()
        rewards, clicks = 0.0, []
        for t in range(5):  # the first steps compile
            a, b = eager.step(actions[t % actions.shape[0]]), fast.step(actions[t % actions.shape[0]])
            rewards = max(rewards, float((a[1] - b[1]).abs().max()))
            clicks.append(float((a[4]["clicked"] == b[4]["clicked"]).float().mean()))
        sync(fast)
        out: dict[str, Any] = {"compile_seconds": round(time.perf_counter() - start, 1)}
        seconds = timed(fast, actions, args.steps)
    except Exception as error:  # reported, not raised: the eager figures stand
        return {"compile_error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    out.update(
        compiled_ms_per_step=round(seconds * 1e3, 3),
        compiled_user_steps_per_s=round(args.users / seconds, 1),
        compiled_reward_max_abs_difference=rewards,  # over 5 steps from the same seed, against eager
        compiled_same_click_share=round(min(clicks), 6),
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="metarec/DriftingUsers-v0")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=10, help="profiled and timed steps (after 5 to warm up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--no-ground-truth", action="store_true")
    parser.add_argument("--compact-observation", action="store_true")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    args = parser.parse_args()
    tune_allocator()
    env = make_env(args)
    env.reset(seed=0)
    space = env.single_action_space
    n = int(space.nvec.max()) if hasattr(space, "nvec") else int(space.n)
    generator = torch.Generator(device=env.device).manual_seed(0)
    actions = torch.randint(n, (4, *env.action_space.shape), generator=generator, device=env.device)
    on_gpu = env.device.type == "cuda"
    timed(env, actions, 5)
    eager = timed(env, actions, args.steps)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        timed(env, actions, args.steps)
    top, busy, kernels = top_operators(prof, args.steps, on_gpu, args.top)
    line: dict[str, Any] = {
        "benchmark": "step_profile",
        "env": args.env,
        "users": args.users,
        "device": str(env.device),
        "ground_truth": not args.no_ground_truth,
        "compact_observation": args.compact_observation,
        "eager_ms_per_step": round(eager * 1e3, 3),
        "eager_user_steps_per_s": round(args.users / eager, 1),
        "device_busy_share": round(busy / eager, 3) if on_gpu else None,
        "kernels_per_step": kernels if on_gpu else None,
        "top": top,
    }
    if args.compile:
        line.update(compiled(args, actions))
    line.update(
        torch=torch.__version__, machine=platform.machine(), threads=torch.get_num_threads(),
        gpu=torch.cuda.get_device_name() if on_gpu else None,
    )  # fmt: skip
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
