"""``metarec export RUN``: a trained recommender as a file that runs with torch alone, onnxruntime, or metarec."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from metarec.io import print_json
from metarec.runs import claim_file


def default_env(source: Path) -> str:
    """The env a run was trained on (a ``metarec train`` run's config), else the flagship env."""
    config = source / "config.yaml"
    if source.is_dir() and config.is_file():
        env = (yaml.safe_load(config.read_text()) or {}).get("env")
        if isinstance(env, str):
            return env
    return "metarec/DriftingUsers-v0"


def run(args: argparse.Namespace) -> int:
    import gymnasium as gym

    from metarec.agents.export import SUFFIXES, export
    from metarec.agents.registry import make_recommender

    source, out = Path(args.run), Path(args.out)
    if not source.exists():
        raise ValueError(f"run: {source} does not exist; expected a metarec train run or RUN/methods/METHOD.pt")
    if out.suffix != SUFFIXES[args.format]:
        raise ValueError(f"out: expected a name ending in {SUFFIXES[args.format]} for --format {args.format}, "
                         f"got {out.name!r}")  # fmt: skip
    claim_file(out, overwrite=args.overwrite)  # before anything is loaded
    env_id = args.env or default_env(source)
    env = gym.make_vec(env_id, num_envs=args.batch, vectorization_mode="vector_entry_point", array_backend="torch",
                       **(args.env_kwargs or {}))  # fmt: skip
    about = export(make_recommender(str(source), env, 0), env, out, args.format, batch=args.batch)
    env.close()
    if args.json:
        print_json({"out": str(out), **about}, args.json_stream)
    else:
        print(f"exported {about['agent']} ({about['kind']}) as {args.format} to {out}: inputs "
              f"{', '.join(about['inputs'])}; outputs {', '.join(about['outputs'])}")  # fmt: skip
    return 0
