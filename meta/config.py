"""The configuration of a meta-training run (``metarec meta-train CONFIG``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from metarec.config import FrozenConfig, load_yaml_config, validate_config
from metarec.meta.evaluate import EvalConfig
from metarec.meta.gradient_rl import GradientConfig
from metarec.meta.incontext import InContextConfig
from metarec.meta.rl2 import RL2Config
from metarec.meta.tasks import TaskDistribution

MethodName = Literal["rl2", "icl", "maml", "fomaml", "reptile", "finetune", "scratch"]
ALL_METHODS: tuple[str, ...] = ("rl2", "icl", "maml", "fomaml", "reptile", "finetune", "scratch")
#: Methods that adapt in their memory (what they remember of each user), not by gradient steps.
MEMORY_METHODS: tuple[str, ...] = ("rl2", "icl")
MetaLearnerName = Literal["rl2", "icl", "maml", "fomaml", "reptile"]


class MetaTrainConfig(FrozenConfig):
    """A meta-training run: the task distribution, the methods and how each is trained and evaluated."""

    tasks: str | TaskDistribution = Field(
        "meta_tasks.yaml", description="Task distribution: a YAML path (relative to this config) or inline."
    )
    train_split: str = Field("meta-train", description="Split the methods meta-train on.")
    test_split: str = Field("meta-test", description="Held-out split of `meta-eval --split test`.")
    sessions: int = Field(20, ge=1, description="Sessions per user (the adaptation curve's length).")
    methods: list[MethodName] = Field(default_factory=lambda: list(ALL_METHODS), min_length=1)
    meta_learner: MetaLearnerName | None = Field(
        None,
        description="The method judged as the meta-learner, named before evaluation: meta-eval reports its paired "
        "lead over every baseline and the demo serves it in the A/B test. None: the meta-learner with the best "
        "mean over sessions 1-10 of each evaluation (picked on the runs it is judged on).",
    )
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
    icl: InContextConfig = Field(default_factory=InContextConfig)
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
        if self.meta_learner is not None and self.meta_learner not in self.methods:
            raise ValueError(f"meta_learner: {self.meta_learner!r} is not one of methods ({', '.join(self.methods)})")
        if isinstance(self.tasks, TaskDistribution):
            for key in ("train_split", "test_split"):
                if getattr(self, key) not in self.tasks.splits:
                    raise ValueError(f"{key}: {getattr(self, key)!r} is not a split of tasks "
                                     f"({', '.join(self.tasks.splits)})")  # fmt: skip
        return self


def load_meta_config(path: str | Path, overrides: list[str] = ()) -> MetaTrainConfig:
    """Reads a meta-train YAML (safe loader), applies ``--set`` overrides, resolves ``tasks`` (a path
    relative to the config file) into its distribution, makes the paths of its fitted sources absolute (relative
    to the file that names them), and validates everything; errors name the key."""
    path = Path(path)
    config = load_yaml_config(MetaTrainConfig, path, list(overrides))
    if isinstance(config.tasks, str):
        tasks_path = Path(os.path.abspath(path.parent / config.tasks))  # as named: a linked folder stays linked
        distribution = load_yaml_config(TaskDistribution, tasks_path).resolved(tasks_path.parent)
    else:
        distribution = config.tasks.resolved(Path(os.path.abspath(path.parent)))
    distribution.check_sources()
    if distribution is not config.tasks:
        values = config.model_dump()
        values["tasks"] = distribution.model_dump()
        config = validate_config(MetaTrainConfig, values)
    return config
