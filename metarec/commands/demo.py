"""``metarec demo``: what the simulator does, measured on every registered environment, and an A/B test.

It evaluates the two reference agents (random, the myopic oracle) on fresh users of every
environment; meta-trains RL², MAML, FOMAML, Reptile and the baselines (``configs/meta_demo.yaml``)
into ``OUT/meta/`` and measures how they adapt to new users of held-out populations; then runs a
simulated A/B test of the meta-learned RL² recommender against LinUCB (the best baseline) and
popularity (control) on users of a held-out population, with its report in ``OUT/abtest/``; and
writes ``results.json``. Without a meta config the A/B test is popularity vs LinUCB vs greedy.

``OUT`` is claimed before any work (:func:`metarec.runs.claim_out`): a non-empty directory the demo
did not make is refused unless ``overwrite`` (``--overwrite``: the demo then replaces only the files it
writes), and the demo deletes only what it made itself: an ``OUT/meta/`` carrying its marker, before
meta-training there again.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from metarec.abtest.config import ABTestConfig
from metarec.abtest.runner import run_abtest
from metarec.agents.evaluation import evaluate
from metarec.commands.demo_report import write_demo_report
from metarec.config import config_path, validate_config
from metarec.envs.fitted_task import task_env
from metarec.io import json_safe, print_json, write_json
from metarec.meta.config import MetaTrainConfig, load_meta_config
from metarec.meta.eval_run import meta_eval
from metarec.meta.tasks import TaskDistribution
from metarec.meta.train import meta_train
from metarec.registration import CORE_ENVIRONMENTS
from metarec.runs import check_out, claim_out, made_by

#: Replicates of the demo's A/B tests: their control (popularity) learns one table from all its users.
DEMO_REPLICATES = 5
OTHER_SPLIT_SEEDS = 2  # evaluation seeds of the held-out splits other than the test split, in the demo
# RecSim's interest-exploration users never leave (27,000-step horizon); the demo looks at 200 steps.
DEMO_ENV_KWARGS = {"metarec/RecSimInterestExploration-v0": {"max_steps": 200}}


META_CONFIG = "metarec:meta_demo"  # shipped in the package (configs/meta_demo.yaml)


def half_width(result: dict) -> float:
    """Half the width of an evaluation's 95% interval (``ci95`` is ``[low, high]``)."""
    low, high = result["ci95"]
    return (high - low) / 2


def run_demo(
    out: str = "runs/demo",
    users: int = 4000,
    seed: int = 0,
    device: str = "cpu",
    meta_config: str | Path | None = META_CONFIG,
    overwrite: bool = False,
) -> dict:
    out_dir = Path(out)
    meta_config = None if meta_config is None else config_path(meta_config)
    meta_train_config = None if meta_config is None else _meta_config(meta_config, seed, device)
    # every output location is checked before any work: OUT, OUT/abtest and OUT/meta
    for path in (out_dir, out_dir / "abtest", *([] if meta_config is None else [out_dir / "meta"])):
        check_out(path, "demo", overwrite)
    claim_out(out_dir, "demo", overwrite)
    claim_out(out_dir / "abtest", "demo", overwrite)
    started = time.perf_counter()
    rows = []
    print(f"Evaluating random and oracle recommenders on {users} fresh users per environment ({device})")
    print(f"{'environment':<40}{'random':>18}{'oracle':>18}{'oracle/random':>15}")
    for entry in CORE_ENVIRONMENTS:
        kwargs = DEMO_ENV_KWARGS.get(entry.id)
        results = {
            # the ranking metrics are left out: the demo reports returns, and keeps within its minutes
            a: evaluate(entry.id, a, users, seed=seed, device=device, env_kwargs=kwargs, metrics=False)
            for a in ("random", "oracle")
        }
        r, o = results["random"], results["oracle"]
        ratio = o["mean_return"] / r["mean_return"] if r["mean_return"] else float("nan")
        print(
            f"{entry.id:<40}{r['mean_return']:>11.2f} ±{half_width(r):>5.2f}"
            f"{o['mean_return']:>11.2f} ±{half_width(o):>5.2f}{ratio:>15.3f}"
        )
        rows.append({"env": entry.id, "random": r, "oracle": o})
    meta = None
    if meta_train_config is None:
        abtest = _demo_abtest(out_dir / "abtest", users, seed, device)
    else:
        meta = _demo_meta(out_dir / "meta", meta_train_config, Path(str(meta_config)).name, overwrite)
        abtest = _demo_meta_abtest(out_dir / "abtest", out_dir / "meta", min(users, 1000), seed, device)
    summary = {
        "users": users,
        "seed": seed,
        "device": device,
        "results": rows,
        "abtest": abtest,
        "meta": meta,
        "seconds": round(time.perf_counter() - started, 2),
    }
    path = out_dir / "results.json"
    write_json(summary, path)

    report = write_demo_report(out_dir, json_safe(summary))
    print(f"Wrote {path} in {summary['seconds']} s; the report: {report['report.html']}")
    return summary


def _demo_abtest(
    out: Path,
    users: int,
    seed: int,
    device: str,
    arms: dict[str, str] | None = None,
    env_kwargs: dict | None = None,
    days: int = 14,
    name: str = "demo A/B test",
    env: str = "metarec/DriftingUsers-v0",
) -> dict:
    """A paired A/B test of popularity (control) against ``arms`` (default LinUCB and a per-user
    greedy bandit), ``days`` days, on ``env``."""

    arms = {"control": "popular", **(arms or {"linucb": "linucb", "greedy": "greedy"})}
    config = validate_config(
        ABTestConfig,
        {
            "name": name,
            "env": env,
            "env_kwargs": env_kwargs or {"population": {"session_budget": 20.0, "steps_per_day": 10}},
            "arms": arms,
            "users": users,
            "days": days,
            "replicates": DEMO_REPLICATES,
            "guardrails": [{"metric": "retention", "max_drop": 0.01}],
            "seed": seed,
            "device": device,
        },
    )
    names = " vs ".join(["popular (control)", *[a for a in arms if a != "control"]])
    print(f"\nA/B test: {names}, {config.replicates} replicates x {users} users x {config.days} days, paired "
          "(popular learns across users: the replicate is the unit)")
    results = run_abtest(config, out, quiet=True)
    primary = config.primary_metric
    for arm, effects in results["effects"].items():
        e = effects[primary]
        print(
            f"  {arm:<8} {primary} {100 * e['relative']:+.2f}% "
            f"(95% CI {100 * e['relative_ci'][0]:+.2f}% to {100 * e['relative_ci'][1]:+.2f}%, "
            f"adjusted p {e['p_adjusted']:.2g})"
        )
    print(f"  report: {out / 'report.html'}")
    return {arm: effects[primary] for arm, effects in results["effects"].items()} | {"report": str(out / "report.html")}


def _demo_meta_abtest(out: Path, meta_run: Path, users: int, seed: int, device: str) -> dict:
    """The meta-learner (the config's ``meta_learner``, else RL²) in a paired A/B test against the best baseline
    of the adaptation protocol (LinUCB) and popularity (control), on users of a held-out population."""
    import yaml

    config = validate_config(MetaTrainConfig, yaml.safe_load((meta_run / "config.yaml").read_text()))
    arm = config.meta_learner or ("rl2" if "rl2" in config.methods else None)
    if arm is None:
        return _demo_abtest(out, users, seed, device)
    population = config.tasks.sample(config.test_split, 1, seed + 777)[0]  # a held-out population
    days = min(config.sessions, 10)
    arms = {"linucb": "linucb", arm: str(meta_run / "methods" / f"{arm}.pt")}
    title = {"rl2": "RL²", "icl": "the in-context recommender"}.get(arm, arm)
    env, env_kwargs = task_env(population)
    name = f"meta-learned {title} on {config.test_split}"
    return _demo_abtest(out, users, seed, device, arms, env_kwargs, days, name, env)


def _meta_config(path: Path, seed: int, device: str) -> MetaTrainConfig:
    """The meta-train config of the demo (read before any work, so a missing one stops it at once)."""
    if not path.is_file():
        raise ValueError(f"meta config: no such file {str(path)!r}")
    return load_meta_config(path, [f"seed={seed}", f"device={device}"])


def _demo_meta(out: Path, config: MetaTrainConfig, name: str, overwrite: bool) -> dict:
    """Meta-trains every method of ``config`` and measures adaptation on held-out populations."""
    import shutil

    if made_by(out, "demo"):
        shutil.rmtree(out)  # the demo starts over each time, in a directory it made itself
    print(f"Meta-training {', '.join(config.methods)} on {config.train_split} populations ({name})")
    # OUT/meta is claimed as the demo's, so the next demo may start it over
    trained = meta_train(config, out, progress=True, command="demo", overwrite=overwrite)
    print(f"Adaptation on held-out populations ({config.test_split}, {config.eval.seeds} seeds)")
    result = meta_eval(out, "test", progress=True, metrics=False)
    # the other held-out splits (a drift regime, a catalogue domain never trained on), on fewer seeds so that
    # the demo stays within minutes; `metarec meta-eval RUN --split NAME` runs the protocol's
    others = {}
    for split in held_out_splits(config):
        seeds = min(OTHER_SPLIT_SEEDS, config.eval.seeds)
        print(f"Adaptation on {split} ({seeds} seeds)")
        others[split] = meta_eval(out, split, progress=True, seeds=seeds, metrics=False)
    sessions = [k for k in (1, 2, 5, 10, 20) if k <= len(result["sessions"])]
    print(f"{'method':<10}" + "".join(f"{'session ' + str(k):>12}" for k in sessions))
    for name, curve in result["methods"].items():
        values = [curve["normalised_return"][k - 1] for k in sessions]
        print(f"{name:<10}" + "".join(f"{'n/a' if v is None else f'{v:.2f}':>12}" for v in values))
    print(
        f"Best meta-learner: {result['best_meta_method']}"
        + (f"; the meta-learner named in the config: {result['meta_learner']}" if result.get("meta_learner") else "")
        + f" (random = 0, oracle = 1); plot: {out / 'adaptation_test.png'}"
    )
    return {"train": trained, "adaptation": result, "other_splits": others}


def held_out_splits(config: MetaTrainConfig) -> list[str]:
    """The task distribution's held-out splits (each holds something out) other than the test split, but for
    those whose catalogs churn: item cold start is measured by ``metarec meta-eval RUN --split NAME``, which
    keeps the demo within its minutes."""
    assert isinstance(config.tasks, TaskDistribution)
    splits, prior = config.tasks.splits, config.tasks.prior
    churn = prior.base.catalog.churn_rate

    def churns(name: str) -> bool:
        return any(prior.domains[domain].get("churn_rate", churn) > 0 for domain in splits[name].domains)

    return [name for name in splits if splits[name].holds_out and name != config.test_split and not churns(name)]


def run(args: argparse.Namespace) -> int:
    kwargs = {}
    if args.meta_config is not None:
        kwargs["meta_config"] = None if args.meta_config == "none" else args.meta_config
    summary = run_demo(out=args.out, users=args.users, seed=args.seed, device=args.device, overwrite=args.overwrite,
                       **kwargs)  # fmt: skip
    if args.json:
        print_json(json_summary(args.out, summary), getattr(args, "json_stream", None))
    return 0


def json_summary(out: str, summary: dict) -> dict:
    """What ``metarec demo --json`` prints: where everything is, each env's random and oracle returns, the
    adaptation curves on the test split and the A/B test's effects (``OUT/results.json`` holds the rest)."""
    line = {
        "out": str(out),
        "results": str(Path(out) / "results.json"),
        "report": str(Path(out) / "report.html"),
        "seconds": summary["seconds"],
        "environments": {
            row["env"]: {agent: row[agent]["mean_return"] for agent in ("random", "oracle")}
            for row in summary["results"]
        },
        "abtest": summary["abtest"],
    }
    if summary["meta"] is not None:
        adaptation = summary["meta"]["adaptation"]
        line["meta"] = {
            "meta_learner": adaptation.get("meta_learner"),
            "sessions": adaptation["sessions"],
            "normalised_return": {name: m["normalised_return"] for name, m in adaptation["methods"].items()},
        }
    return line
