#!/usr/bin/env python
"""Throughput benchmark for Google's original RecSim (PyPI `recsim` 0.2.4).

Runs a single-user RecSim gym environment with recsim's RandomAgent for a
fixed number of env.step() calls (= user-steps; RecSim simulates exactly one
user per environment), calling env.reset() whenever an episode ends (this
samples a new user; reset cost is included in the timing).  Repeats the run
`--runs` times in the same process and reports the median wall time.

Prints ONE line of JSON per environment:
  {"peer": "recsim" (or "recsim-no-tf"), "env": ..., "users": 1, "steps": ..., "seconds": ...,
   "user_steps_per_s": ..., ...extra diagnostic fields...}

Usage (no network needed at run time):
  $PEERS/venv-recsim/bin/python benchmarks/peers/bench_recsim.py \
      [--env interest_evolution|interest_exploration|long_term_satisfaction|all]
      [--steps 20000] [--runs 3] [--num-candidates 10] [--slate-size 2]
      [--seed 0]
"""
import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # silence TF C++ logging
warnings.filterwarnings("ignore")

ENVS = ("interest_evolution", "interest_exploration", "long_term_satisfaction")


def run_once(module, cfg, steps, seed):
  """Returns (seconds, episodes, total_reward) for `steps` env.step calls."""
  import numpy as np
  from recsim.agents import random_agent
  np.random.seed(seed)  # recsim's choice models use the global numpy RNG
  env = module.create_environment(cfg)
  agent = random_agent.RandomAgent(env.action_space, random_seed=seed)
  obs = env.reset()
  reward = 0.0
  total_reward = 0.0
  episodes = 1
  t0 = time.perf_counter()
  for _ in range(steps):
    slate = agent.step(reward, obs)
    obs, reward, done, _ = env.step(slate)
    total_reward += reward
    if done:
      obs = env.reset()
      reward = 0.0
      episodes += 1
  return time.perf_counter() - t0, episodes, total_reward


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--env", default="interest_evolution",
                 choices=(*ENVS, "all"))
  p.add_argument("--steps", type=int, default=20000)
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--num-candidates", type=int, default=10)
  p.add_argument("--slate-size", type=int, default=2)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()

  t = time.perf_counter()
  import importlib

  import numpy as np
  from recsim.environments import interest_evolution  # noqa: F401  (imports TF via gin.tf)
  import_s = time.perf_counter() - t
  logging.getLogger("absl").setLevel(logging.ERROR)
  from importlib.metadata import PackageNotFoundError, version
  versions = {}
  for k in ("recsim", "recsim-no-tf", "recsim-v2", "tensorflow", "gym",
            "numpy", "gin-config"):
    with contextlib.suppress(PackageNotFoundError):
      versions[k] = version(k)
  peer = next((k for k in ("recsim", "recsim-no-tf", "recsim-v2")
               if k in versions), "recsim")

  envs = ENVS if a.env == "all" else (a.env,)
  for name in envs:
    module = importlib.import_module("recsim.environments." + name)
    cfg = {"num_candidates": a.num_candidates, "slate_size": a.slate_size,
           "resample_documents": True, "seed": a.seed}
    times, eps, rews = [], [], []
    for r in range(a.runs):
      s, e, rew = run_once(module, cfg, a.steps, a.seed + r)
      times.append(s)
      eps.append(e)
      rews.append(rew)
    med = statistics.median(times)
    print(json.dumps({
        "peer": peer,
        "env": name,
        "users": 1,
        "steps": a.steps,
        "seconds": round(med, 4),
        "user_steps_per_s": round(a.steps / med, 1),
        "runs_seconds": [round(x, 4) for x in times],
        "episodes_per_run": eps,
        "mean_reward_per_step": round(float(np.mean(rews)) / a.steps, 4),
        "num_candidates": a.num_candidates,
        "slate_size": a.slate_size,
        "agent": "recsim.agents.random_agent.RandomAgent",
        "import_s": round(import_s, 2),
        "python": sys.version.split()[0],
        "versions": versions,
    }), flush=True)


if __name__ == "__main__":
  main()
