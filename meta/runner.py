"""``metarec meta-train`` and ``metarec meta-eval``: a run directory of meta-trained methods.

``meta-train CONFIG --out DIR`` trains every method of the config in turn on the training split
and writes::

    DIR/config.yaml             the validated config (what meta-eval reads back)
    DIR/methods/NAME.pt         each method's final weights (weights only)
    DIR/checkpoints/last.pt     atomic checkpoint: finished methods and the one in progress
    DIR/tb/NAME/                TensorBoard scalars per method
    DIR/results.json            per-method updates, env steps, seconds, env-steps/s, params_sha256

A checkpoint is written every ``checkpoint_every`` updates, at the end of each method and on
SIGTERM/SIGINT; ``--resume`` continues from it and ends with the same parameters as an
uninterrupted run (CPU, same seed). ``params_sha256`` is the SHA-256 of every method's final
parameters, methods in config order and parameters in ``state_dict`` order, as raw little-endian
bytes.

``meta-eval DIR --split test|train`` runs the adaptation protocol (:mod:`metarec.meta.evaluate`)
on the held-out (or training) split for every trained method plus ``linucb``, ``random`` and
``oracle``, writes ``eval_SPLIT.json`` and PNG plots, and returns the result.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import Field, field_validator, model_validator

from metarec.config import FrozenConfig, validate_config
from metarec.io import atomic_save, atomic_write_text, json_safe
from metarec.meta.evaluate import EvalConfig, LoggedItemStats, RL2Recommender, evaluate
from metarec.meta.gradient_rl import AdaptingRecommender, GradientConfig, GradientMetaTrainer
from metarec.meta.policy import feedforward_policy
from metarec.meta.rl2 import RL2Config, RL2Trainer
from metarec.meta.tasks import TaskDistribution
from metarec.parallel import all_reduce_, group_size, spawn_for_result, torchrun_group, world_size
from metarec.parallel import rank as distributed_rank

MethodName = Literal["rl2", "maml", "fomaml", "reptile", "finetune", "scratch"]
ALL_METHODS: tuple[str, ...] = ("rl2", "maml", "fomaml", "reptile", "finetune", "scratch")


class MetaTrainConfig(FrozenConfig):
    """A meta-training run: the task distribution, the methods and how each is trained and evaluated."""

    tasks: str | TaskDistribution = Field(
        "meta_tasks.yaml", description="Task distribution: a YAML path (relative to this config) or inline."
    )
    train_split: str = Field("meta-train", description="Split the methods meta-train on.")
    test_split: str = Field("meta-test", description="Held-out split of `meta-eval --split test`.")
    sessions: int = Field(20, ge=1, description="Sessions per user (the adaptation curve's length).")
    methods: list[MethodName] = Field(default_factory=lambda: list(ALL_METHODS), min_length=1)
    seed: int = Field(0, ge=0, description="Seeds weights, task streams, users and evaluation.")
    device: str = Field("cpu", description="Torch device.")
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads (None: torch's default).")
    checkpoint_every: int = Field(10, ge=1, description="Updates between checkpoints.")
    item_stats: bool = Field(
        True,
        description="Candidates carry the population's logged item statistics (CTR, engagement per "
        "impression, impressions) at training and evaluation, for every method and LinUCB alike.",
    )
    rl2: RL2Config = Field(default_factory=RL2Config)
    gradient: GradientConfig = Field(default_factory=GradientConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("methods")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"methods: each method at most once, got {value}")
        return value

    @model_validator(mode="after")
    def _splits_exist(self) -> MetaTrainConfig:
        if isinstance(self.tasks, TaskDistribution):
            for key in ("train_split", "test_split"):
                if getattr(self, key) not in self.tasks.splits:
                    raise ValueError(f"{key}: {getattr(self, key)!r} is not a split of tasks "
                                     f"({', '.join(self.tasks.splits)})")  # fmt: skip
        return self


def load_meta_config(path: str | Path, overrides: list[str] = ()) -> MetaTrainConfig:
    """Reads a meta-train YAML (safe loader), applies ``--set`` overrides, resolves ``tasks`` (a path
    relative to the config file) into its distribution, and validates everything; errors name the key."""
    from metarec.config import load_yaml_config

    path = Path(path)
    config = load_yaml_config(MetaTrainConfig, path, list(overrides))
    if isinstance(config.tasks, str):
        tasks_path = (path.parent / config.tasks).resolve()
        distribution = load_yaml_config(TaskDistribution, tasks_path)
        values = config.model_dump()
        values["tasks"] = distribution.model_dump()
        config = validate_config(MetaTrainConfig, values)
    return config


def params_sha256(state_dicts: list[dict[str, torch.Tensor]]) -> str:
    """SHA-256 of parameters in a canonical order (as given; keys in state_dict order), as raw bytes."""
    digest = hashlib.sha256()
    for state in state_dicts:
        for key, value in state.items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _trainer(name: str, config: MetaTrainConfig) -> RL2Trainer | GradientMetaTrainer:
    assert isinstance(config.tasks, TaskDistribution)
    if name == "rl2":
        return RL2Trainer(config.tasks, config.train_split, config.rl2, config.sessions, config.seed, config.device,
                          config.item_stats)  # fmt: skip
    return GradientMetaTrainer(name, config.tasks, config.train_split, config.gradient, config.sessions,  # type: ignore[arg-type]
                               config.seed, config.device, config.item_stats)  # fmt: skip


def meta_train(
    config: MetaTrainConfig, out: str | Path, resume: bool = False, progress: bool = True, nproc: int = 1
) -> dict[str, Any]:
    """Trains every method of ``config`` into ``out`` (see the module docstring).

    ``nproc > 1`` spawns that many processes on this machine (``torch.distributed``: gloo on CPU,
    NCCL on GPUs) that share each meta-batch's tasks and average the meta-gradients; the parameters
    equal a one-process run's up to floating-point summation order. Under ``torchrun`` (``WORLD_SIZE``
    set), the processes torchrun started join one group the same way. RL² shares its meta-batch's
    tasks the same way (see :mod:`metarec.meta.rl2`).
    """
    out = Path(out)
    checkpoint_path = out / "checkpoints" / "last.pt"
    if out.exists() and any(out.iterdir()) and not resume:
        raise ValueError(f"out: {out} is not empty; pass --resume to continue the run there, or another --out")
    if resume and not checkpoint_path.is_file():
        raise ValueError(f"--resume: no checkpoint at {checkpoint_path}")
    world = world_size(nproc)
    if world > 1 and "rl2" in config.methods and config.rl2.tasks_per_batch % world:
        raise ValueError(f"rl2.tasks_per_batch: must divide among {world} processes, got {config.rl2.tasks_per_batch}")
    gradient_methods = set(config.methods) - {"rl2", "scratch"}
    if world > 1 and gradient_methods and config.gradient.tasks_per_batch % world:
        raise ValueError(f"gradient.tasks_per_batch: must divide among {world} processes, got "
                         f"{config.gradient.tasks_per_batch}")  # fmt: skip
    if nproc > 1:
        _spawn(config, out, resume, nproc)
        return json.loads((out / "results.json").read_text())
    if world > 1:  # started by torchrun
        torchrun_group(config.device, config.torch_threads)
    return _meta_train(config, out, resume, progress)


def _any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set in any process of the group (every process calls this each update)."""
    value = torch.tensor([flag])
    all_reduce_([value], op="max")
    return bool(value.item())


def _spawn(config: MetaTrainConfig, out: Path, resume: bool, nproc: int) -> None:
    """Runs ``nproc`` worker processes; SIGTERM/SIGINT to this process is passed on to them, so they
    checkpoint and stop together, and then raises :class:`TrainingInterrupted` here."""
    from metarec.parallel import TrainingInterrupted

    def stopped(signal_name: str) -> Exception:
        checkpoint = out / "checkpoints" / "last.pt"
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True) if checkpoint.is_file() else {}
        step = int(((saved.get("current") or {}).get("state") or {}).get("global_step", 0))
        return TrainingInterrupted(signal_name, step, checkpoint)

    spawn_for_result(_worker, (config.model_dump_json(), str(out), resume), nproc, config.device,
                     config.torch_threads, on_stop=stopped)  # fmt: skip


def _worker(config_json: str, out: str, resume: bool) -> None:
    _meta_train(MetaTrainConfig.model_validate_json(config_json), Path(out), resume, progress=False)


def _meta_train(config: MetaTrainConfig, out: Path, resume: bool, progress: bool) -> dict[str, Any]:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from metarec.parallel import TrainingInterrupted, stop_requests
    from metarec.training import NoWriter

    rank, world = distributed_rank(), group_size()
    primary = rank == 0  # the one process that writes files
    checkpoint_path = out / "checkpoints" / "last.pt"
    if config.torch_threads and world == 1:
        torch.set_num_threads(config.torch_threads)
    out.mkdir(parents=True, exist_ok=True)
    saved: dict[str, Any] = {"finished": {}, "current": None}
    if resume:
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if saved.get("config") != json.loads(config.model_dump_json()):
            raise ValueError(f"--resume: {out} was started with a different config; use another --out")
    elif primary:
        atomic_write_text(yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False), out / "config.yaml")
    finished: dict[str, dict[str, Any]] = saved["finished"]
    started = time.perf_counter()
    with stop_requests() as request:
        for name in config.methods:
            if name in finished:
                continue
            trainer = _trainer(name, config)
            current = saved.get("current")
            if current is not None and current["name"] == name:
                trainer.load_state_dict(current["state"])
            # on resume, events logged after the checkpoint (by the interrupted process) are dropped
            writer: Any = (
                SummaryWriter(str(out / "tb" / name), purge_step=trainer.update + 1 if resume else None)
                if primary
                else NoWriter()
            )
            total = config.rl2.updates if name == "rl2" else (0 if name == "scratch" else config.gradient.meta_steps)
            bar = tqdm(total=total, initial=trainer.update, desc=name, unit="update", disable=not progress)
            method_start, steps_before = time.perf_counter(), trainer.global_step
            seconds_before = float(current["seconds"]) if current is not None and current["name"] == name else 0.0

            def checkpoint(state: dict[str, Any] | None, name: str = name, start: float = method_start,
                           before: float = seconds_before) -> None:  # fmt: skip
                entry = None if state is None else {"name": name, "state": state,
                                                    "seconds": before + time.perf_counter() - start}  # fmt: skip
                payload = {"config": json.loads(config.model_dump_json()), "finished": finished, "current": entry}
                if primary:
                    atomic_save(payload, checkpoint_path)

            while not trainer.done:
                stats = trainer.step()
                for key, value in stats.items():
                    writer.add_scalar(f"{name}/{key}", value, trainer.update)
                bar.update(1)
                stop = request["signal"] is not None
                if world > 1:  # every process stops at the same update (the agreed flag, not this one's)
                    stop = _any_rank(stop)
                if stop or trainer.update % config.checkpoint_every == 0:
                    checkpoint(trainer.state_dict())
                    writer.flush()
                if stop:
                    bar.close()
                    writer.close()
                    raise TrainingInterrupted(str(request["signal"] or "SIGTERM"), trainer.global_step, checkpoint_path)
            bar.close()
            writer.close()
            seconds = seconds_before + time.perf_counter() - method_start
            policy = trainer.policy
            if primary:
                atomic_save({"name": name, "policy": policy.state_dict()}, out / "methods" / f"{name}.pt")
            this_process = time.perf_counter() - method_start
            finished[name] = {
                "updates": trainer.update,
                "env_steps": trainer.global_step,
                "seconds": seconds,
                "env_steps_per_s": (trainer.global_step - steps_before) / this_process if this_process > 0 else None,
                "params": {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()},
            }
            checkpoint(None)
    results = {
        "methods": {name: {k: v for k, v in info.items() if k != "params"} for name, info in finished.items()},
        "params_sha256": params_sha256([finished[name]["params"] for name in config.methods]),
        "wall_seconds": sum(float(finished[name]["seconds"]) for name in config.methods),
        "wall_seconds_this_process": time.perf_counter() - started,
        "seed": config.seed,
        "device": config.device,
        "processes": world,
    }
    if primary:
        atomic_write_text(json.dumps(results, indent=2), out / "results.json")
    return results


def _load_into(policy: torch.nn.Module, weights: dict[str, torch.Tensor], run: Path, name: str) -> None:
    try:
        policy.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ValueError(
            f"run: {run}'s {name} weights do not fit the network this config builds ({first}); "
            "was it trained by another version of metarec? Train it again"
        ) from None


def _load_method(run: Path, name: str) -> dict[str, torch.Tensor]:
    path = run / "methods" / f"{name}.pt"
    if not path.is_file():
        raise ValueError(f"run: {run} has no trained {name!r} ({path} is missing); finish meta-train first")
    return torch.load(path, map_location="cpu", weights_only=True)["policy"]


def load_meta_recommender(weights: str | Path, env: Any, seed: int) -> Any:
    """The RL² recommender saved at ``RUN/methods/rl2.pt`` of a meta-train run, for the vector env ``env``
    (one population, as in an A/B test): its memory adapts to each user from their responses and, when
    the run trained with item statistics, it logs its own (:class:`~metarec.meta.evaluate.LoggedItemStats`).
    The gradient methods adapt per population by policy-gradient steps and serve only in meta-eval."""
    weights = Path(weights)
    run, name = weights.parent.parent, weights.stem
    if not (run / "config.yaml").is_file() or weights.parent.name != "methods":
        raise ValueError(f"agent: {weights} is not RUN/methods/METHOD.pt of a meta-train run")
    if name != "rl2":
        raise ValueError(f"agent: {weights} is a {name!r} policy; only rl2 serves outside meta-eval so far")
    config = validate_config(MetaTrainConfig, yaml.safe_load((run / "config.yaml").read_text()))
    space = env.single_observation_space
    if config.item_stats:
        from gymnasium import spaces

        n, f = space["candidates"].shape
        space = spaces.Dict({**space.spaces, "candidates": spaces.Box(-np.inf, np.inf, (n, f + 3), np.float32)})
    slate_size = int(env.single_action_space.shape[0])
    policy = config.rl2.make_policy(space, slate_size).to(env.device)
    _load_into(policy, _load_method(run, name), run, name)
    generator = torch.Generator(device=env.device).manual_seed(seed)
    recommender = RL2Recommender(policy, generator, deterministic=config.eval.rl2_greedy)
    recommender.name = f"rl2:{run.name}"
    if config.item_stats:
        recommender = LoggedItemStats(recommender, int(env.model.num_items), env.device)
    return recommender


def meta_eval(run: str | Path, split: Literal["test", "train"] = "test", progress: bool = False,
              seeds: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Evaluates every method of a finished meta-train run on ``split`` (see the module docstring)."""
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise ValueError(f"run: {run} is not a meta-train run directory (no config.yaml)")
    config = validate_config(MetaTrainConfig, yaml.safe_load((run / "config.yaml").read_text()))
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    assert isinstance(config.tasks, TaskDistribution)
    eval_config = config.eval if seeds is None else config.eval.model_copy(update={"seeds": seeds})
    weights = {name: _load_method(run, name) for name in config.methods}
    device = torch.device(config.device)

    def make(name: str):
        def factory(env: Any, seed: int) -> Any:
            generator = torch.Generator(device=device).manual_seed(seed)
            slate_size = env.model.slate_size
            if name == "linucb":
                from metarec.agents.registry import make_recommender

                return make_recommender("linucb", env, seed)
            if name == "rl2":
                policy = config.rl2.make_policy(env.single_observation_space, slate_size).to(device)
                _load_into(policy, weights[name], run, name)
                return RL2Recommender(policy, generator, deterministic=eval_config.rl2_greedy)
            policy = feedforward_policy(env.single_observation_space, slate_size, config.gradient.hidden).to(device)
            _load_into(policy, weights[name], run, name)
            return AdaptingRecommender(name, policy, config.gradient, env.num_tasks, env.users_per_task, slate_size,
                                       generator)  # fmt: skip

        return factory

    methods = {name: make(name) for name in (*config.methods, "linucb")}
    split_name = config.test_split if split == "test" else config.train_split
    from tqdm import tqdm

    started = time.perf_counter()
    runs = eval_config.seeds * (len(methods) + 2)  # + random and oracle
    with tqdm(total=runs, desc=f"meta-eval {split_name}", unit="run", disable=not progress) as bar:

        def tick(message: str) -> None:
            bar.set_postfix_str(message.split(": ")[0], refresh=False)
            bar.update(1)

        result = evaluate(methods, config.tasks, split_name, config.sessions, eval_config, config.seed, device,
                          progress=tick, item_stats=config.item_stats)  # fmt: skip
    result["wall_seconds"] = time.perf_counter() - started
    result = json_safe(result)  # NaN and inf become None: JSON has no such numbers
    (run / f"eval_{split}.json").write_text(json.dumps(result, indent=2))
    plot_adaptation(result, run / f"adaptation_{split}.png")
    return result


def plot_adaptation(result: dict[str, Any], path: Path) -> None:
    """The adaptation curves (normalised return per session, 95% bands) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    sessions = result["sessions"]
    for name, curve in result["methods"].items():
        if name in ("random", "oracle"):
            continue
        mean = np.array([np.nan if v is None else v for v in curve["normalized_return"]], dtype=float)
        ci = np.array([[np.nan if v is None else v for v in pair] for pair in curve["ci95"]], dtype=float)
        (line,) = ax.plot(sessions, mean, marker="o", markersize=3, label=name)
        ax.fill_between(sessions, ci[:, 0], ci[:, 1], color=line.get_color(), alpha=0.15)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="oracle")
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":", label="random")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("session k (new users of held-out populations)")
    ax.set_ylabel("normalised return (random 0, oracle 1)")
    ax.set_title(f"Adaptation on {result['split']} ({result.get('seeds', '?')} seeds, 95% intervals)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
