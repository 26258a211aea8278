"""Meta-training throughput: env-steps/s of RL² (recurrent PPO over task batches) and of MAML
(second-order, vmapped over tasks), and the raw task-batch env step as their peer. One JSON line.

    python benchmarks/meta_throughput.py [--config configs/meta_demo.yaml] [--updates 6] [--device cpu]

Each trainer takes one warm-up update, then ``--updates`` timed ones, with the config's sizes. The
env row steps the RL² meta-batch (tasks x users) under uniformly random slates, no ground truth.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.config import load_meta_config
from metarec.meta.gradient_rl import GradientMetaTrainer
from metarec.meta.rl2 import RL2Trainer
from metarec.meta.tasks import task_batch


def timed(trainer: RL2Trainer | GradientMetaTrainer, updates: int) -> float:
    trainer.step()  # warm-up
    steps, start = trainer.global_step, time.perf_counter()
    for _ in range(updates):
        trainer.step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return (trainer.global_step - steps) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "meta_demo.yaml"))
    parser.add_argument("--updates", type=int, default=6)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    overrides = [f"device={args.device}"] if args.device else []
    config = load_meta_config(args.config, overrides)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    rl2 = RL2Trainer(config.tasks, config.train_split, config.rl2, config.sessions, config.seed, config.device,
                     config.item_stats)  # fmt: skip
    maml = GradientMetaTrainer("maml", config.tasks, config.train_split, config.gradient, config.sessions,
                               config.seed, config.device, config.item_stats)  # fmt: skip
    r = config.rl2
    env = TaskBatchVectorEnv(task_batch(config.tasks, config.train_split, r.tasks_per_batch, 0, 0, config.sessions),
                             r.users_per_task, device=config.device, ground_truth=False,
                             item_stats=config.item_stats)  # fmt: skip
    env.reset(seed=0)
    generator = torch.Generator(device=env.device).manual_seed(0)
    slates = torch.rand(100, env.num_envs, 20, generator=generator, device=env.device).argsort(-1)[..., :5]
    start = time.perf_counter()
    for t in range(100):
        env.step(slates[t])
    env_rate = 100 * env.num_envs / (time.perf_counter() - start)
    result = {
        "benchmark": "meta_throughput",
        "device": str(rl2.device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "rl2_users": r.tasks_per_batch * r.users_per_task,
        "rl2_env_steps_per_s": round(timed(rl2, args.updates)),
        "maml_users": config.gradient.tasks_per_batch * config.gradient.users_per_task,
        "maml_env_steps_per_s": round(timed(maml, args.updates)),
        "env_only_steps_per_s": round(env_rate),
    }
    result["rl2_share_of_env_rate"] = round(result["rl2_env_steps_per_s"] / env_rate, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
