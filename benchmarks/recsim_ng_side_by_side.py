"""RecSim NG and metarec side by side, in one process: user-steps per second of interest evolution.

Needs the recsim-ng extra (run it with ``.venv-recsim-ng/bin/python``; ``make test-recsim-ng`` builds
that venv). Prints one JSON line with three figures at ``--users`` users and ``--steps`` steps, each
the median of ``--runs`` timed runs after an untimed warm-up (which also traces TensorFlow's graphs):

* ``port``: metarec's port ``metarec/RecSimNGInterestEvolution-v0`` (vector env), uniformly random
  slates drawn in advance, no ground truth.
* ``recsim_ng_runtime``: RecSim NG's own simulation of the same model run whole by its runtime
  (``TFRuntime.execute``, one compiled ``tf.while_loop``), with its own recommender
  (``CollabFilteringRecommender``: a small network scores the 100 documents for every user and a
  slate is sampled), as RecSim NG's users run it.
* ``adapter``: ``metarec/RecSimNG-v0``, RecSim NG stepped one slate at a time with the same random
  slates as the port (what a metarec agent sees).

and the ratios ``port / recsim_ng_runtime`` and ``port / adapter``. The port leaves the scoring of
candidates to the agent; RecSim NG's runtime figure includes its recommender's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gymnasium as gym
import torch

import metarec  # noqa: F401


def timed(run, runs: int) -> tuple[float, list[float]]:
    run()  # warm-up: traces TensorFlow's functions, fills caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), [round(t, 4) for t in times]


def vector_env_runner(env_id: str, users: int, steps: int, **kwargs):
    env = gym.make_vec(env_id, num_envs=users, vectorization_mode="vector_entry_point", autoreset=False,
                       array_backend="torch", **kwargs)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    slates = torch.rand(steps, users, 100, generator=generator).argsort(dim=2)[:, :, :2].contiguous()

    def run() -> None:
        env.reset(seed=0)
        for t in range(steps):
            env.step(slates[t])

    return run


def recsim_ng_runner(users: int, steps: int):
    import tensorflow as tf
    from recsim_ng.applications.recsys_partially_observable_rl import simulation_config
    from recsim_ng.core import network as network_lib
    from recsim_ng.lib.tensorflow import runtime

    tf.random.set_seed(0)
    variables, _ = simulation_config.create_interest_evolution_simulation_network(num_users=users)
    tf_runtime = runtime.TFRuntime(network=network_lib.Network(variables=variables))

    def run() -> None:
        final = tf_runtime.execute(num_steps=steps)
        _, reward = network_lib.find_unique_field(final, field_name="cumulative_reward")
        reward.numpy()  # waits for the graph

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch and TensorFlow intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    work = args.users * args.steps
    figures = {}
    for name, runner in {
        "port": vector_env_runner("metarec/RecSimNGInterestEvolution-v0", args.users, args.steps, ground_truth=False),
        "recsim_ng_runtime": recsim_ng_runner(args.users, args.steps),
        "adapter": vector_env_runner("metarec/RecSimNG-v0", args.users, args.steps, ground_truth=False),
    }.items():
        seconds, runs = timed(runner, args.runs)
        figures[name] = {"seconds": round(seconds, 4), "runs_seconds": runs, "user_steps_per_s": round(work / seconds)}
    from importlib.metadata import version

    print(
        json.dumps(
            {
                "benchmark": "recsim_ng_side_by_side",
                "users": args.users,
                "steps": args.steps,
                **figures,
                "ratio_port_over_recsim_ng_runtime": round(
                    figures["port"]["user_steps_per_s"] / figures["recsim_ng_runtime"]["user_steps_per_s"], 2
                ),
                "ratio_port_over_adapter": round(
                    figures["port"]["user_steps_per_s"] / figures["adapter"]["user_steps_per_s"], 2
                ),
                "threads": args.threads,
                "versions": {p: version(p) for p in ("torch", "tensorflow", "recsim-ng", "numpy")},
                "machine": f"{platform.machine()} {os.cpu_count()} cores",
            }
        )
    )


if __name__ == "__main__":
    main()
