#!/usr/bin/env python
"""Mean episodic return of RecSim's RandomAgent on one of RecSim's own environments.

Prints one JSON line: {"peer", "env", "episodes", "mean_return", "sem", "num_candidates", "slate_size"}.
Run with a venv holding recsim (0.2.4 pinned) or recsim-no-tf: see setup.sh.
"""
import argparse
import importlib
import json
import os
import statistics
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")

p = argparse.ArgumentParser()
p.add_argument("--env", default="interest_evolution")
p.add_argument("--episodes", type=int, default=2000)
p.add_argument("--num-candidates", type=int, default=10)
p.add_argument("--slate-size", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()

import numpy as np  # noqa: E402  (after argparse, so --help needs no RecSim)
from recsim.agents import random_agent  # noqa: E402

np.random.seed(a.seed)
module = importlib.import_module("recsim.environments." + a.env)
env = module.create_environment({"num_candidates": a.num_candidates, "slate_size": a.slate_size,
                                 "resample_documents": True, "seed": a.seed})
agent = random_agent.RandomAgent(env.action_space, random_seed=a.seed)
returns = []
for _ in range(a.episodes):
    obs, reward, done, total = env.reset(), 0.0, False, 0.0
    while not done:
        obs, reward, done, _ = env.step(agent.step(reward, obs))
        total += reward
    returns.append(total)
print(json.dumps({"peer": "recsim", "env": a.env, "episodes": a.episodes,
                  "mean_return": statistics.fmean(returns),
                  "sem": statistics.stdev(returns) / len(returns) ** 0.5,
                  "num_candidates": a.num_candidates, "slate_size": a.slate_size}))
