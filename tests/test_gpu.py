"""CPU and CUDA agree: every environment, the PPO slate policy and RL² give on a GPU what they give on the CPU.

Random streams differ by device (torch draws other numbers on CUDA from the same seed), so trajectories are
compared in distribution: the mean return of the same recommender over the same number of users lies within
sampling error (4 standard errors of the difference). Networks are compared exactly: the same weights on the same
inputs give the same outputs up to float32 rounding. Run by ``benchmarks/gpu_suite.sh``; every test here skips
where CUDA is absent.
"""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import pytest
import torch

import metarec  # noqa: F401
from metarec.agents.evaluation import evaluate
from metarec.agents.nn.networks import SlatePolicy
from metarec.meta.policy import RL2Policy
from metarec.registration import CORE_ENVIRONMENTS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_suite.sh)"),
]
USERS = 2048
# RecSim's interest exploration runs 27,000 steps a user, about 160 s on an H200 one step at a time; 500 steps
# check the same dynamics.
SHORTER = {"metarec/RecSimInterestExploration-v0": {"max_steps": 500}}


def agree(cpu: dict, cuda: dict) -> None:
    se = math.hypot(cpu["std_return"], cuda["std_return"]) / math.sqrt(USERS)
    assert abs(cpu["mean_return"] - cuda["mean_return"]) <= 4 * se + 1e-6, (cpu["mean_return"], cuda["mean_return"])


@pytest.mark.parametrize("env_id", [entry.id for entry in CORE_ENVIRONMENTS])
@pytest.mark.parametrize("agent", ["random", "oracle"])
def test_every_environment_returns_on_cuda_what_it_returns_on_the_cpu(env_id, agent):
    kwargs = SHORTER.get(env_id)
    cpu = evaluate(env_id, agent, USERS, seed=0, device="cpu", env_kwargs=kwargs, metrics=False)
    cuda = evaluate(env_id, agent, USERS, seed=0, device="cuda", env_kwargs=kwargs, metrics=False)
    agree(cpu, cuda)


def test_a_churning_catalog_and_a_task_batch_agree_on_cuda():
    kwargs = {"catalog": {"churn_rate": 2.0}}
    agree(
        evaluate("metarec/DriftingUsers-v0", "popular", USERS, device="cpu", env_kwargs=kwargs, metrics=False),
        evaluate("metarec/DriftingUsers-v0", "popular", USERS, device="cuda", env_kwargs=kwargs, metrics=False),
    )


def vector_observation(device: str, users: int = 64) -> tuple[gym.vector.VectorEnv, dict]:
    env = gym.make_vec(
        "metarec/DriftingUsers-v0", num_envs=users, vectorization_mode="vector_entry_point",
        array_backend="torch", device=device,
    )  # fmt: skip
    observation, _ = env.reset(seed=0)
    return env, observation


def test_the_slate_policy_scores_alike_on_both_devices():
    env, observation = vector_observation("cpu")
    torch.manual_seed(0)
    policy = SlatePolicy(env.single_observation_space, env.unwrapped.model.slate_size)
    on_gpu = copy.deepcopy(policy).to("cuda")
    logits, value = policy(observation)
    logits_gpu, value_gpu = on_gpu({key: v.to("cuda") for key, v in observation.items()})
    torch.testing.assert_close(logits_gpu.cpu(), logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(value_gpu.cpu(), value, rtol=1e-4, atol=1e-4)


def test_rl2_reads_and_scores_alike_on_both_devices():
    env, observation = vector_observation("cpu")
    torch.manual_seed(0)
    policy = RL2Policy(env.single_observation_space, env.unwrapped.model.slate_size, 32, belief=True)
    on_gpu = copy.deepcopy(policy).to("cuda")
    users = env.num_envs
    results = []
    for net, device in ((policy, "cpu"), (on_gpu, "cuda")):
        obs = {key: v.to(device) for key, v in observation.items()}
        memory = net.initial_memory(users, torch.device(device))
        reward = torch.linspace(0, 3, users, device=device)
        hidden = net.read(memory, obs, reward)
        beliefs = net.believe(memory, obs, users)
        logits, value = net.act_from(obs, hidden, beliefs)
        results.append((hidden.cpu(), logits.cpu(), value.cpu()))
    for cpu, cuda in zip(*results, strict=True):
        torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-4)


def test_a_compact_observation_expands_on_cuda_and_the_policy_gathers_it_there():
    kwargs = {"vectorization_mode": "vector_entry_point", "array_backend": "torch", "device": "cuda"}
    full = gym.make_vec("metarec/DriftingUsers-v0", num_envs=256, **kwargs)
    compact = gym.make_vec("metarec/DriftingUsers-v0", num_envs=256, compact_observation=True, **kwargs)
    seen, indices = full.reset(seed=3)[0], compact.reset(seed=3)[0]
    expanded = compact.unwrapped.expand(indices)
    assert all(torch.equal(seen[key], expanded[key]) for key in seen)
    tables = compact.unwrapped.observation_tables
    policy = SlatePolicy(compact.unwrapped.full_observation_space, 5, 32, "mlp", tables).to("cuda")
    with torch.no_grad():  # the same numbers through the same layers (CUDA's reductions may round otherwise)
        torch.testing.assert_close(policy(indices)[0], policy(seen)[0], rtol=1e-5, atol=1e-5)
    plain = evaluate("metarec/DriftingUsers-v0", "linucb", USERS, seed=0, device="cuda", metrics=False)
    small = evaluate(
        "metarec/DriftingUsers-v0", "linucb", USERS, seed=0, device="cuda", metrics=False,
        env_kwargs={"compact_observation": True},
    )  # fmt: skip
    assert math.isclose(plain["mean_return"], small["mean_return"], rel_tol=1e-5)


def test_cumulative_sums_of_short_rows_on_cuda_are_the_cpus():
    from array_api_compat import torch as xp

    from metarec.envs.core.choice import row_cumsum

    rows = torch.rand(100_000, 6, generator=torch.Generator().manual_seed(0))
    on_gpu = row_cumsum(xp, rows.to("cuda"))
    assert on_gpu.shape == rows.shape and on_gpu.dtype == rows.dtype
    torch.testing.assert_close(on_gpu.cpu(), torch.cumsum(rows, dim=1), rtol=1e-6, atol=0)
