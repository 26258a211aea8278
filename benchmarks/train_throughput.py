"""Training throughput: env steps per second of a full training loop (rollouts plus updates).

    python benchmarks/train_throughput.py --algo batched-ppo --env metarec/DriftingUsers-v0 --steps 300000
    python benchmarks/train_throughput.py --algo sb3-ppo --env metarec/DriftingUsers-v0 --steps 20000

Prints one JSON line: ``algo``, ``env``, ``env_steps``, ``seconds``, ``env_steps_per_s``, ``device``,
``num_envs``, ``threads`` and the hyper-parameters that set the work per step.

Both algorithms train metarec's :class:`~metarec.agents.nn.networks.SlatePolicy` (same width and
history encoder). ``batched-ppo`` uses the ``ppo`` section of ``--config`` (default
``configs/ppo_drifting.yaml``, the configuration whose results BENCHMARKS.md reports);
``sb3-ppo`` uses stable-baselines3's PPO defaults (n_steps 2048, batch 64, 10 epochs) over
``--sb3-envs`` users through the :class:`~metarec.agents.sb3.SB3VecEnv` adapter, unless
``--sb3-epochs`` / ``--sb3-batch`` change them. The first update is a warm-up and not timed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import torch
import yaml

import metarec  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def make_env(args: argparse.Namespace, num_envs: int) -> gym.vector.VectorEnv:
    """The native vector env both algorithms train on (no ground truth: neither reads it)."""
    return gym.make_vec(
        args.env,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        device=args.device,
        ground_truth=False,
        array_backend="torch",
    )


def ppo_section(args: argparse.Namespace) -> dict:
    """The ``ppo`` section of ``--config``: batched PPO's hyper-parameters and the network both use."""
    return yaml.safe_load(Path(args.config).read_text()).get("ppo", {})


def batched_ppo(args: argparse.Namespace) -> dict:
    from metarec.agents.ppo import BatchedPPO, PPOConfig

    section = ppo_section(args)
    if args.num_envs:
        section["num_envs"] = args.num_envs
    config = PPOConfig(**section)
    env = make_env(args, config.num_envs)
    ppo = BatchedPPO(env, config, seed=0, total_steps=args.steps)
    ppo.learn(ppo.collect())  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start_step, start = ppo.global_step, time.perf_counter()
    ppo.train(start_step + args.steps)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    steps = ppo.global_step - start_step
    return {
        "env_steps": steps,
        "seconds": seconds,
        "num_envs": config.num_envs,
        "hyperparameters": {
            "rollout_steps": config.rollout_steps,
            "update_epochs": config.update_epochs,
            "minibatch": config.num_envs * config.rollout_steps // config.num_minibatches,
            "hidden": config.hidden,
            "history_encoder": config.history_encoder,
        },
    }


def sb3_ppo(args: argparse.Namespace) -> dict:
    from metarec.agents.sb3 import make_sb3_model

    section = ppo_section(args)
    policy_kwargs = {"hidden": section.get("hidden", 64), "history_encoder": section.get("history_encoder", "gru")}
    env = make_env(args, args.sb3_envs)
    algo_kwargs = {"n_steps": args.sb3_n_steps, "batch_size": args.sb3_batch, "n_epochs": args.sb3_epochs}
    model = make_sb3_model("ppo", env, seed=0, policy_kwargs=policy_kwargs, algo_kwargs=algo_kwargs, device=args.device)
    per_update = args.sb3_envs * args.sb3_n_steps
    model.learn(per_update)  # warm-up
    start = time.perf_counter()
    model.learn(args.steps, reset_num_timesteps=False)
    seconds = time.perf_counter() - start
    steps = model.num_timesteps - per_update
    return {
        "env_steps": steps,
        "seconds": seconds,
        "num_envs": args.sb3_envs,
        "hyperparameters": {**algo_kwargs, **policy_kwargs},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", required=True, choices=["batched-ppo", "sb3-ppo"])
    parser.add_argument("--env", default="metarec/DriftingUsers-v0")
    parser.add_argument("--steps", type=int, default=200_000, help="timed env steps (after a warm-up update)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", default=str(ROOT / "configs" / "ppo_drifting.yaml"))
    parser.add_argument("--num-envs", type=int, default=0, help="batched-ppo users (default: the config's)")
    parser.add_argument("--sb3-envs", type=int, default=8)
    parser.add_argument("--sb3-n-steps", type=int, default=2048)
    parser.add_argument("--sb3-batch", type=int, default=64)
    parser.add_argument("--sb3-epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = batched_ppo(args) if args.algo == "batched-ppo" else sb3_ppo(args)
    print(
        json.dumps(
            {
                "algo": args.algo,
                "env": args.env,
                **result,
                "env_steps_per_s": result["env_steps"] / result["seconds"],
                "device": args.device,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
