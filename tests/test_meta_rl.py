"""Meta-RL end to end: RL² memory semantics, the gradient trainers, the adaptation protocol, and
``metarec meta-train`` / ``meta-eval`` on ``configs/meta_tiny.yaml`` (determinism, SIGKILL resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from metarec.config import load_yaml_config
from metarec.meta.config import load_meta_config
from metarec.meta.eval_run import meta_eval
from metarec.meta.evaluate import EvalConfig, RL2Recommender, adaptation_curves
from metarec.meta.gradient_rl import GradientConfig, GradientMetaTrainer, window_advantages
from metarec.meta.policy import RL2Policy
from metarec.meta.rl2 import RL2Config, RL2Trainer
from metarec.meta.tasks import TaskDistribution, task_batch
from metarec.meta.train import meta_train

ROOT = Path(__file__).parents[1]
TINY = ROOT / "configs" / "meta_tiny.yaml"


@pytest.fixture(scope="module")
def distribution() -> TaskDistribution:
    return load_yaml_config(TaskDistribution, ROOT / "configs" / "meta_tasks.yaml")


def test_rl2_memory_is_kept_across_sessions_and_cleared_for_new_users(distribution) -> None:
    config = RL2Config(tasks_per_batch=2, users_per_task=32, rollout_steps=4, hidden=8, num_minibatches=2)
    trainer = RL2Trainer(distribution, "meta-train", config, sessions=6, seed=1)
    kept = cleared = 0
    for _ in range(40):
        before = trainer.memory.hidden.clone()
        hidden = trainer.policy.read(trainer.memory, trainer.observation, trainer.last_reward)
        slate = trainer.policy.distribution(trainer.policy.act_from(trainer.observation, hidden)[0]).mode()
        observation, reward, terminated, truncated, info = trainer.env.step(slate)
        done = terminated | truncated
        shown = trainer.policy.remember(hidden, None, trainer.observation, slate)
        memory = RL2Policy.reset_memory(shown, done)
        returned = info["returned"]
        # a user who comes back for another session keeps what the memory learned
        assert torch.all(memory.hidden[returned].abs().sum(dim=1) > 0)
        assert torch.all(memory.hidden[done] == 0) and torch.all(memory.last_slate[done] == 0)
        kept += int(returned.sum())
        cleared += int(done.sum())
        assert not torch.equal(before, memory.hidden)
        trainer.memory, trainer.last_reward, trainer.observation = memory, reward.masked_fill(done, 0), observation
    assert kept > 0 and cleared > 0
    # a new meta-batch of tasks starts every user with an empty memory
    trainer._next_task_batch()
    assert torch.all(trainer.memory.hidden == 0)
    assert trainer.env.tasks != task_batch(distribution, "meta-train", 2, 1, 0, 6)


def test_rl2_recommender_clears_memory_only_where_told(distribution) -> None:
    tasks = task_batch(distribution, "meta-test", 2, seed=0, index=0, sessions=3)
    from metarec.envs.task_batch import TaskBatchVectorEnv

    env = TaskBatchVectorEnv(tasks, 4)
    observation, info = env.reset(seed=0)
    torch.manual_seed(0)
    policy = RL2Policy(env.single_observation_space, 5, 8)
    agent = RL2Recommender(policy, torch.Generator().manual_seed(0))
    agent.reset()
    for _ in range(3):
        slate = agent.act(observation, info)
        observation, reward, _, _, info = env.step(slate)
        agent.observe(reward, torch.zeros(8, dtype=torch.bool), info)
    mask = torch.tensor([True, False] * 4)
    agent.reset(mask)
    assert torch.all(agent.memory.hidden[mask] == 0) and torch.all(agent.memory.hidden[~mask].abs().sum(1) > 0)
    assert torch.all(agent.last_reward[mask] == 0)


def test_window_advantages_centre_per_task_and_step_and_ignore_inactive() -> None:
    rewards = torch.tensor([[[1.0, 3.0, 100.0], [0.0, 0.0, 0.0]], [[5.0, 5.0, 5.0], [1.0, 1.0, 1.0]]])  # [T2, L2, U3]
    active = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]])
    adv = window_advantages(rewards, active, gamma=0.5)
    assert torch.all(adv[0, :, 2] == 0)  # an inactive user teaches nothing
    assert adv[0, 0, 0] < 0 < adv[0, 0, 1]  # the better user of task 0 at step 0
    assert torch.allclose(adv[1], torch.zeros(2, 3), atol=1e-5)  # equal users: no signal
    assert torch.allclose((adv[0] * active[0]).sum(dim=1), torch.zeros(2), atol=1e-5)
    # nothing from after a user left flows back into their return-to-go
    left = window_advantages(torch.tensor([[[1.0, 1.0], [0.0, 50.0]]]), torch.tensor([[[1.0, 1.0], [1.0, 0.0]]]), 1.0)
    assert left[0, 0, 0] == left[0, 0, 1]  # both earned 1 while present


def test_per_user_advantages_read_only_that_users_own_rewards() -> None:
    rewards = torch.tensor([[[1.0], [3.0], [2.0]], [[5.0], [5.0], [5.0]], [[0.0], [4.0], [90.0]]])  # [B3, L3, 1]
    active = torch.tensor([[[1.0], [1.0], [1.0]], [[1.0], [1.0], [1.0]], [[1.0], [1.0], [0.0]]])
    adv = window_advantages(rewards, active, gamma=0.0, per_user=True)
    assert adv[0, 0, 0] < 0 < adv[0, 1, 0]  # each step against the user's own mean reward
    assert torch.allclose(adv[1], torch.zeros(3, 1), atol=1e-5)  # a user whose rewards never vary: no signal
    assert adv[2, 2, 0] == 0 and adv[2, 0, 0] < 0 < adv[2, 1, 0]  # the step after they left counts for nothing
    # another user's rewards change nothing of this user's advantages
    other = rewards.clone()
    other[0] = torch.tensor([[7.0], [-2.0], [0.5]])
    assert torch.equal(window_advantages(other, active, 0.5, per_user=True)[1:], window_advantages(rewards, active,
                       0.5, per_user=True)[1:])  # fmt: skip


@pytest.mark.parametrize(
    ("method", "adapt"),
    [("maml", "population"), ("fomaml", "population"), ("reptile", "population"), ("finetune", "population"),
     ("maml", "user"), ("reptile", "user")],
)  # fmt: skip
def test_gradient_trainers_move_the_parameters_deterministically(distribution, method, adapt) -> None:
    config = GradientConfig(tasks_per_batch=2, users_per_task=8, rollout_steps=4, meta_steps=2, inner_steps=2, hidden=8,
                            adapt=adapt)  # fmt: skip

    def run() -> list[torch.Tensor]:
        trainer = GradientMetaTrainer(method, distribution, "meta-train", config, sessions=2, seed=3)
        start = [p.detach().clone() for p in trainer.policy.parameters()]
        while not trainer.done:
            stats = trainer.step()
            assert all(np.isfinite(v) for v in stats.values())
        end = [p.detach().clone() for p in trainer.policy.parameters()]
        assert any(not torch.equal(a, b) for a, b in zip(start, end, strict=True))
        assert trainer.groups == (16 if adapt == "user" else 2)  # parameters per user, or per task
        return end

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_protocol_normalises_random_to_zero_and_oracle_to_one(distribution) -> None:
    config = EvalConfig(tasks=2, users_per_task=8, seeds=2, shift_at=5, window=3, max_steps=30)
    result = adaptation_curves({}, distribution, "meta-test", 3, config, seed=0)
    assert result["sessions"] == [1, 2, 3]
    assert np.allclose(result["methods"]["random"]["normalised_return"], 0.0)
    assert np.allclose(result["methods"]["oracle"]["normalised_return"], 1.0)
    assert result["methods"]["oracle"]["shift"]["regret_after_shift"] == pytest.approx(0.0, abs=1e-4)
    assert result["methods"]["random"]["shift"]["regret_after_shift"] > 0.1
    assert result["best_meta_method"] is None


def test_meta_config_errors_name_the_key(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"tasks: {ROOT / 'configs' / 'meta_tasks.yaml'}\nmethods: [rl2, dqn]\n")
    with pytest.raises(ValueError, match=r"methods\.1"):
        load_meta_config(bad)
    bad.write_text(f"tasks: {ROOT / 'configs' / 'meta_tasks.yaml'}\ntest_split: nowhere\n")
    with pytest.raises(ValueError, match="test_split: 'nowhere' is not a split"):
        load_meta_config(bad)
    bad.write_text("tasks: missing.yaml\n")
    with pytest.raises(ValueError, match="no such file"):
        load_meta_config(bad)
    with pytest.raises(ValueError, match=r"rl2\.updates"):
        load_meta_config(TINY, ["rl2.updates=0"])


def test_meta_tiny_trains_deterministically_and_evaluates(tmp_path) -> None:
    config = load_meta_config(TINY)
    first = meta_train(config, tmp_path / "a", progress=False)
    second = meta_train(config, tmp_path / "b", progress=False)
    assert first["params_sha256"] == second["params_sha256"]
    assert set(first["methods"]) == {"rl2", "icl", "maml", "fomaml", "reptile", "finetune", "scratch"}
    with pytest.raises(ValueError, match="not empty; pass --resume"):
        meta_train(config, tmp_path / "a", progress=False)
    result = meta_eval(tmp_path / "a", "test")
    assert result["split"] == "meta-test" and result["sessions"] == [1, 2, 3, 4]
    baselines = {"popular", "linucb", "thompson", "greedy", "hbayes"}
    assert (
        set(result["methods"])
        == {"rl2", "icl", "maml", "fomaml", "reptile", "finetune", "scratch", "random", "oracle"} | baselines
    )
    for curve in result["methods"].values():
        assert len(curve["normalised_return"]) == 4 and len(curve["ci95"]) == 4
        # cumulative regret after 10 interactions (the tiny protocol runs 40; 50 and 100 are beyond it)
        assert curve["regret_after"]["10"]["mean"] >= 0 and curve["regret_after"]["100"]["mean"] is None
    oracle_regret = result["methods"]["oracle"]["regret_after"]["10"]["mean"]
    assert oracle_regret == pytest.approx(0.0, abs=1e-6)
    assert (
        result["methods"]["random"]["regret_after"]["10"]["mean"]
        > result["methods"]["hbayes"]["regret_after"]["10"]["mean"]
    )
    assert result["best_meta_method"] in ("rl2", "icl", "maml", "fomaml", "reptile")
    # the best meta-learner against each baseline, paired by seed: scipy's paired t interval
    paired = result["paired"]
    assert paired["method"] == result["best_meta_method"]
    assert set(paired["against"]) == {"popular", "linucb", "thompson", "greedy", "finetune", "scratch", "hbayes"}
    best = np.array(result["methods"][paired["method"]]["per_seed"], dtype=float)
    assert best.shape == (load_meta_config(TINY).eval.seeds, 4)
    for other, lead in paired["against"].items():
        theirs = np.array(result["methods"][other]["per_seed"], dtype=float)
        reference = stats.ttest_rel(best, theirs, axis=0).confidence_interval(0.95)
        np.testing.assert_allclose(lead["difference"], (best - theirs).mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(lead["ci95"], np.stack([reference.low, reference.high], axis=1), rtol=1e-9)
    assert (tmp_path / "a" / "adaptation_test.png").stat().st_size > 1000
    on_disk = json.loads((tmp_path / "a" / "eval_test.json").read_text())
    assert on_disk["methods"]["rl2"]["normalised_return"] == result["methods"]["rl2"]["normalised_return"]
    # any split of the task distribution, by name; an unknown one is refused with the names, nothing written
    regime = meta_eval(tmp_path / "a", "meta-test-regime", seeds=2)
    assert regime["split"] == "meta-test-regime" and (tmp_path / "a" / "eval_meta-test-regime.json").is_file()
    assert regime["methods"]["rl2"]["per_seed"] != result["methods"]["rl2"]["per_seed"]
    with pytest.raises(ValueError, match=r"^split: expected test, train or a split .*meta-test-domain.*got 'nowhere'"):
        meta_eval(tmp_path / "a", "nowhere")
    assert not (tmp_path / "a" / "eval_nowhere.json").exists()
    # weights that do not fit the network (another version, a hand-edited file) are refused by name
    saved = torch.load(tmp_path / "a" / "methods" / "maml.pt", weights_only=True)
    saved["policy"].pop(next(iter(saved["policy"])))
    torch.save(saved, tmp_path / "a" / "methods" / "maml.pt")
    with pytest.raises(ValueError, match="maml weights do not fit the network"):
        meta_eval(tmp_path / "a", "test")


def test_logged_item_stats_match_what_the_task_batch_env_appends(distribution) -> None:
    """A meta policy trained with item statistics serves on a plain env by logging its own: the
    features it appends are the ones the task-batch env would have appended for the same steps."""
    from metarec.envs.task_batch import TaskBatchVectorEnv
    from metarec.meta.evaluate import LoggedItemStats

    class Recording:
        name = "recording"

        def __init__(self) -> None:
            self.seen: list[torch.Tensor] = []
            self.generator = torch.Generator().manual_seed(0)

        def reset(self, mask=None) -> None:
            pass

        def act(self, observation, info):
            self.seen.append(observation["candidates"][..., -3:].clone())
            return torch.rand(observation["candidates"].shape[:2], generator=self.generator).argsort(1)[:, :5]

        def observe(self, reward, done, info) -> None:
            pass

    task = distribution.sample("meta-train", 1, seed=3)[0]
    env = TaskBatchVectorEnv([task], users_per_task=32, item_stats=True)
    assert env.model.slate_size == 5
    inner = Recording()
    served = LoggedItemStats(inner, env.model.num_items, "cpu")
    observation, info = env.reset(seed=1)
    for _ in range(25):
        plain = {**observation, "candidates": observation["candidates"][..., :-3]}
        slate = served.act(plain, info)
        torch.testing.assert_close(inner.seen[-1], observation["candidates"][..., -3:])
        observation, reward, terminated, truncated, info = env.step(slate)
        served.observe(reward, terminated | truncated, info)
    logged = served.stats()
    assert float(logged[:, 0].sum()) > 0 and torch.equal(logged[:, :2], env.model.item_stats[:, :2])
    torch.testing.assert_close(logged[:, 2], env.model.item_stats[:, 2])  # fixed point against float32 sums


def test_methods_log_the_same_tags_as_batched_ppo_each_in_its_own_run(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = load_meta_config(TINY, ["methods=[rl2,maml,reptile,scratch]", "torch_threads=null"])
    meta_train(config, tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run" / "tb").iterdir()) == ["maml", "reptile", "rl2"]  # scratch: none
    tags = {name: set(EventAccumulator(str(tmp_path / "run" / "tb" / name)).Reload().Tags()["scalars"])
            for name in ("rl2", "maml", "reptile")}  # fmt: skip
    assert {"losses/policy_loss", "losses/value_loss", "losses/entropy", "charts/reward"} <= tags["rl2"]
    assert {"losses/meta_loss", "charts/meta_grad_norm"} <= tags["maml"]
    assert tags["reptile"] == {"charts/reptile_step_norm"}
    assert not any(tag.startswith(("rl2/", "maml/", "reptile/")) for run in tags.values() for tag in run)
    for name in ("rl2", "maml", "reptile"):  # hyper-parameters through the HParams plugin, the method among them
        events = EventAccumulator(str(tmp_path / "run" / "tb" / name), size_guidance={"tensors": 0}).Reload()
        assert "_hparams_/experiment" in events.PluginTagToContent("hparams"), name
        start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        assert name.encode() in start and b"rl2.hidden" in start, name


def test_meta_train_killed_with_sigkill_resumes_to_the_same_parameters(tmp_path) -> None:
    reference = meta_train(load_meta_config(TINY), tmp_path / "whole", progress=False)["params_sha256"]
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "metarec", "meta-train", str(TINY), "--out", str(out), "--quiet", "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.is_file():  # the first checkpoint: RL² part-way through its updates
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "results.json").exists()
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["params_sha256"] == reference


def test_two_gloo_processes_give_the_parameters_of_one(tmp_path) -> None:
    # RL² over 6 updates crosses two new task batches (resample_every 2), so autoreset, new users
    # and the shared reward scale all happen across processes
    config = load_meta_config(TINY, ["methods=[rl2,maml,reptile,finetune]", "gradient.meta_steps=4"])
    one = meta_train(config, tmp_path / "one", progress=False)
    two = meta_train(config, tmp_path / "two", progress=False, nproc=2)
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["methods"]["rl2"]["env_steps"] == one["methods"]["rl2"]["env_steps"]
    for name in ("rl2", "maml", "reptile", "finetune"):
        a = torch.load(tmp_path / "one" / "methods" / f"{name}.pt", weights_only=True)["policy"]
        b = torch.load(tmp_path / "two" / "methods" / f"{name}.pt", weights_only=True)["policy"]
        moved = max(float((a[k] - b[k]).abs().max()) for k in a)
        # Only the order of floating-point sums differs, and Adam turns last-bit differences in
        # near-zero gradients into steps of up to its learning rate (1e-3 here), so how far apart the
        # runs land depends on the machine: RL² 1.1e-6 on session 6's CPU, 1.6e-5 on session 8's.
        assert moved < 1e-4, (name, moved)


def test_processes_refuse_what_they_cannot_share(tmp_path) -> None:
    config = load_meta_config(TINY, ["methods=[rl2]", "rl2.tasks_per_batch=3"])
    with pytest.raises(ValueError, match=r"rl2\.tasks_per_batch: must divide among 2 processes, got 3"):
        meta_train(config, tmp_path / "a", progress=False, nproc=2)
    config = load_meta_config(TINY, ["methods=[maml]", "gradient.tasks_per_batch=3"])
    with pytest.raises(ValueError, match=r"gradient\.tasks_per_batch: must divide among 2 processes, got 3"):
        meta_train(config, tmp_path / "b", progress=False, nproc=2)


@pytest.mark.parametrize("name", ["meta_tiny.yaml", "meta_demo.yaml", "meta_gpu.yaml"])
def test_shipped_meta_configs_validate(name) -> None:
    config = load_meta_config(ROOT / "configs" / name)
    assert isinstance(config.tasks, TaskDistribution)
    assert config.train_split in config.tasks.splits and config.test_split in config.tasks.splits
    assert config.gradient.tasks_per_batch * config.gradient.users_per_task >= 64


def test_sigterm_to_a_two_process_run_checkpoints_both_and_resumes(tmp_path) -> None:
    # stopped in RL² (its checkpoint holds both processes' users), then MAML
    sets = ["--set", "methods=[rl2,maml]", "--set", "rl2.updates=40", "--set", "gradient.meta_steps=10",
            "--set", "checkpoint_every=1"]  # fmt: skip
    base = [sys.executable, "-m", "metarec", "meta-train", str(TINY), "--nproc", "2", "--quiet", "--json", *sets]
    whole = subprocess.run([*base, "--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "stopped"
    process = subprocess.Popen([*base, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "checkpoints" / "last.pt").is_file():
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and not (out / "results.json").exists()
    one = [arg for arg in base if arg not in ("--nproc", "2")]
    refused = subprocess.run([*one, "--out", str(out), "--resume"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "resume with --nproc 2" in refused.stderr, refused.stderr
    resumed = subprocess.run([*base, "--out", str(out), "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["params_sha256"] == json.loads(whole.stdout)["params_sha256"]


def test_ctrl_c_to_the_process_group_of_a_two_process_run_checkpoints_and_resumes(tmp_path) -> None:
    """A terminal's Ctrl-C (or a batch system's signal) reaches the whole process group: the launcher
    forwards one stop to its workers, which left its session, so none gets it twice and dies of it."""
    out = tmp_path / "run"
    base = [sys.executable, "-m", "metarec", "meta-train", str(TINY), "--nproc", "2", "--quiet", "--json",
            "--out", str(out), "--set", "methods=[rl2]", "--set", "rl2.updates=200",
            "--set", "checkpoint_every=1"]  # fmt: skip
    process = subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "checkpoints" / "last.pt").is_file():
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "stopped by SIGINT" in stderr, stderr
    resumed = subprocess.run([*base, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["methods"]["rl2"] == 200
