#!/usr/bin/env python
"""Throughput benchmark for RecSim NG (PyPI `recsim-ng` 0.1.2).

Builds one of the simulations bundled in recsim_ng/applications and runs it
with recsim_ng.lib.tensorflow.runtime.TFRuntime (graph-compiled tf.while_loop)
for `--steps` steps over `--users` users (all users are simulated in one
batched TF graph).

Timing: the first execute() traces/compiles the graph and is reported as
"first_call_s" (not counted).  Then execute(num_steps=steps) is called `--runs`
times (each run re-samples the initial state and simulates `steps` steps) and
the median wall time is reported.  user_steps_per_s = users*steps/median.

apps:
  ecosystem_simulation  recsim_ng.applications.ecosystem_simulation
                        (ClusteredNormalUserCoreDispersion users, ViableCorpus
                        with 80 providers / 400 docs, MyopicRecommender,
                        slate 3, 2 topics -- the demo's configuration)
  interest_evolution    recsim_ng.applications.recsys_partially_observable_rl
                        (InterestEvolutionUser, static CorpusWithTopicAndQuality
                        100 docs, CollabFilteringRecommender (keras), slate 2,
                        2 topics -- simulation only, no policy-gradient step)

Prints ONE line of JSON per (app, users) combination:
  {"peer": "recsim-ng", "env": ..., "users": ..., "steps": ..., "seconds": ...,
   "user_steps_per_s": ..., ...extra diagnostic fields...}

Usage (no network needed at run time):
  $PEERS/venv-rsng/bin/python benchmarks/peers/bench_recsim_ng.py \
      [--app ecosystem_simulation|interest_evolution|all]
      [--users 100 [1000 ...]] [--steps 100] [--runs 3] [--seed 0]
      [--threads N]   # TF intra/inter-op threads (default: TF's own choice)
"""
import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # silence TF C++ logging
warnings.filterwarnings("ignore")

APPS = ("ecosystem_simulation", "interest_evolution")


def build(app, num_users, seed):
  """Returns (network, reward_field_name, config_description)."""
  import numpy as np
  import tensorflow as tf
  from recsim_ng.core import network as network_lib
  np.random.seed(seed)
  tf.random.set_seed(seed)
  if app == "ecosystem_simulation":
    from recsim_ng.applications.ecosystem_simulation import simulation_config
    from recsim_ng.applications.ecosystem_simulation import user as eco_user
    # Same constants as ecosystem_simulation_demo.py.
    provider_means = eco_user.init_random_provider_clusters(
        provider_disp=64.0, provider_fan_out=2, num_provider_clusters=40,
        num_topics=2)
    variables = simulation_config.create_viable_provider_simulation_network(
        provider_means, num_users=num_users)
    desc = {"num_providers": int(provider_means.shape[0]),
            "num_docs": int(provider_means.shape[0]) * 5, "slate_size": 3,
            "num_topics": 2}
  elif app == "interest_evolution":
    from recsim_ng.applications.recsys_partially_observable_rl import simulation_config
    variables, _ = simulation_config.create_interest_evolution_simulation_network(
        num_users=num_users)
    desc = {"num_docs": 100, "slate_size": 2, "num_topics": 2,
            "history_length": 15}
  else:
    raise ValueError(app)
  return network_lib.Network(variables=variables), desc


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--app", default="ecosystem_simulation", choices=(*APPS, "all"))
  p.add_argument("--users", type=int, nargs="+", default=[1000])
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--threads", type=int, default=0)
  a = p.parse_args()

  t = time.perf_counter()
  import recsim_ng  # noqa: F401
  import tensorflow as tf
  from recsim_ng.core import network as network_lib
  from recsim_ng.lib.tensorflow import runtime
  import_s = time.perf_counter() - t
  tf.get_logger().setLevel(logging.ERROR)
  logging.getLogger("absl").setLevel(logging.ERROR)
  if a.threads:
    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(a.threads)
  try:
    from importlib.metadata import version
    versions = {k: version(k) for k in (
        "recsim-ng", "tensorflow", "tensorflow-probability", "edward2", "gym",
        "numpy", "scipy")}
  except Exception:  # pragma: no cover
    versions = {}

  apps = APPS if a.app == "all" else (a.app,)
  for app in apps:
    for num_users in a.users:
      t = time.perf_counter()
      net, desc = build(app, num_users, a.seed)
      tf_runtime = runtime.TFRuntime(network=net)  # graph_compile=True
      build_s = time.perf_counter() - t

      def run(tf_runtime=tf_runtime):
        final = tf_runtime.execute(num_steps=a.steps)
        _, rew = network_lib.find_unique_field(final,
                                               field_name="cumulative_reward")
        return float(tf.reduce_mean(rew).numpy())  # forces completion

      t = time.perf_counter()
      run()  # trace + compile + first run (not counted)
      first_s = time.perf_counter() - t
      times, rews = [], []
      for _ in range(a.runs):
        t = time.perf_counter()
        rews.append(run())
        times.append(time.perf_counter() - t)
      med = statistics.median(times)
      print(json.dumps({
          "peer": "recsim-ng",
          "env": app,
          "users": num_users,
          "steps": a.steps,
          "seconds": round(med, 4),
          "user_steps_per_s": round(num_users * a.steps / med, 1),
          "runs_seconds": [round(x, 4) for x in times],
          "first_call_s": round(first_s, 3),
          "build_s": round(build_s, 3),
          "mean_cumulative_reward": round(statistics.mean(rews), 4),
          "runtime": "recsim_ng.lib.tensorflow.runtime.TFRuntime(graph_compile=True)",
          "config": desc,
          "threads": a.threads or "tf-default",
          "import_s": round(import_s, 2),
          "python": sys.version.split()[0],
          "versions": versions,
      }), flush=True)


if __name__ == "__main__":
  main()
