"""``metarec meta-eval RUN --split NAME``: the adaptation protocol (:mod:`metarec.meta.evaluate`) on a split of
the run's task distribution (``test`` and ``train`` name the run's own test and training splits) for every
trained method, the online baselines and the hierarchical Bayesian reference (:mod:`metarec.meta.baselines`),
``random`` and ``oracle``; writes ``eval_SPLIT.json`` and a PNG of the adaptation curves into the run
directory and returns the result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from metarec.config import validate_config
from metarec.io import json_safe, write_json
from metarec.meta.baselines import baseline_factories, fit_bayes_prior
from metarec.meta.config import MetaTrainConfig
from metarec.meta.evaluate import adaptation_curves
from metarec.meta.robustness import PERTURBATIONS, perturbed, robustness_section
from metarec.meta.serving import build_method, load_method_weights
from metarec.meta.tasks import TaskDistribution


def split_of(config: MetaTrainConfig, split: str) -> str:
    """The task distribution's split that ``split`` names (``test``, ``train`` or a split's own name)."""
    assert isinstance(config.tasks, TaskDistribution)
    named = {"test": config.test_split, "train": config.train_split}
    if split in named:
        return named[split]
    if split not in config.tasks.splits:
        raise ValueError(
            f"split: expected test, train or a split of the run's task distribution "
            f"({', '.join(config.tasks.splits)}), got {split!r}"
        )
    return split


def meta_eval(run: str | Path, split: str = "test", progress: bool = False, seeds: int | None = None,
              metrics: bool = True, baselines: bool = True, robustness: bool = False) -> dict[str, Any]:  # fmt: skip
    """Evaluates every method of a finished meta-train run on ``split`` (see the module docstring); ``metrics``
    False leaves out the ranking metrics per session (:mod:`metarec.agents.metrics`), which cost time, and
    ``baselines`` False the non-meta baselines (random and the oracle stay: they normalise the returns).
    ``robustness`` runs the protocol again under each perturbation of :mod:`metarec.meta.robustness` (once more
    the time per perturbation) and adds its ``robustness`` section."""
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise ValueError(f"run: {run} is not a meta-train run directory (no config.yaml)")
    config = validate_config(MetaTrainConfig, yaml.safe_load((run / "config.yaml").read_text()))
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    assert isinstance(config.tasks, TaskDistribution)
    split_name = split_of(config, split)
    eval_config = config.eval if seeds is None else config.eval.model_copy(update={"seeds": seeds})
    weights = {name: load_method_weights(run, name) for name in config.methods}
    device = torch.device(config.device)

    def make(name: str):
        def factory(env: Any, seed: int) -> Any:
            generator = torch.Generator(device=device).manual_seed(seed)
            space, slate_size = env.single_observation_space, env.model.slate_size
            return build_method(config, run, name, weights[name], env, space, slate_size, generator)

        return factory

    methods = {name: make(name) for name in config.methods}
    if baselines:
        methods.update(baseline_factories(fit_bayes_prior(config.tasks, config.train_split, config.seed)))
    started = time.perf_counter()
    perturbations = list(PERTURBATIONS) if robustness else []
    runs = eval_config.seeds * (len(methods) + 2) * (1 + len(perturbations))  # + random and oracle
    with tqdm(total=runs, desc=f"meta-eval {split_name}", unit="run", disable=not progress) as bar:

        def tick(message: str) -> None:
            bar.set_postfix_str(message.split(": ")[0], refresh=False)
            bar.update(1)

        def curves(perturb: Any = None, ranked: bool = metrics) -> dict[str, Any]:
            return adaptation_curves(methods, config.tasks, split_name, config.sessions, eval_config, config.seed,
                                     device, progress=tick, item_stats=config.item_stats,
                                     meta_learner=config.meta_learner, metrics=ranked, perturb=perturb)  # fmt: skip

        result = curves()
        if perturbations:
            perturbed_runs = {name: curves(perturbed(name), ranked=False) for name in perturbations}
            result["robustness"] = robustness_section(result, perturbed_runs)
    result["wall_seconds"] = time.perf_counter() - started
    result = json_safe(result)  # NaN and inf become None: JSON has no such numbers
    write_json(result, run / f"eval_{split}.json")
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
        mean = np.array([np.nan if v is None else v for v in curve["normalised_return"]], dtype=float)
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
