"""``metarec export RUN``: a trained recommender as a file that runs with torch alone, onnxruntime, or metarec."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from metarec.io import print_json
from metarec.runs import claim_file


def run_env(source: Path) -> tuple[str, dict]:
    """The env a run was trained on and its keyword arguments (a ``metarec train`` run's config), else the
    flagship env's defaults."""
    config = source / "config.yaml"
    if source.is_dir() and config.is_file():
        saved = yaml.safe_load(config.read_text()) or {}
        if isinstance(saved.get("env"), str):
            return saved["env"], dict(saved.get("env_kwargs") or {})
    return "metarec/DriftingUsers-v0", {}


def run(args: argparse.Namespace) -> int:
    import gymnasium as gym

    from metarec.agents.evaluation import check_env_kwargs
    from metarec.agents.export import SUFFIXES, export
    from metarec.agents.registry import make_recommender

    source, out = Path(args.run), Path(args.out)
    if not source.exists():
        raise ValueError(f"run: {source} does not exist; expected a metarec train run or RUN/methods/METHOD.pt")
    if out.suffix != SUFFIXES[args.format]:
        raise ValueError(f"out: expected a name ending in {SUFFIXES[args.format]} for --format {args.format}, "
                         f"got {out.name!r}")  # fmt: skip
    trained_env, trained_kwargs = run_env(source)
    env_id = args.env or trained_env
    env_kwargs = {**(trained_kwargs if env_id == trained_env else {}), **(args.env_kwargs or {})}
    check_env_kwargs(env_id, env_kwargs, "env_kwargs")
    claim_file(out, overwrite=args.overwrite)  # before anything is loaded
    env = gym.make_vec(env_id, num_envs=max(args.batch, 2), vectorization_mode="vector_entry_point",
                       array_backend="torch", **env_kwargs)  # fmt: skip
    about = export(make_recommender(str(source), env, 0), env, out, args.format, batch=args.batch)
    env.close()
    if args.json:
        print_json({"out": str(out), **about}, getattr(args, "json_stream", None))
    else:
        print(f"exported {about['agent']} ({about['kind']}) as {args.format} to {out}: inputs "
              f"{', '.join(about['inputs'])}; outputs {', '.join(about['outputs'])}")  # fmt: skip
    return 0
