"""``metarec simulate-logs``: simulated interaction logs in the generic schema, or an offline dataset (parquet
impressions, the Open Bandit Dataset's CSV layout, Open Bandit Pipeline's bandit feedback, Minari)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from metarec.io import print_json
from metarec.runs import claim_file, claim_out


def run(args: argparse.Namespace) -> int:
    if args.format == "generic":
        return _generic(args)
    from metarec.calibration.offline import MINARI_ID, check_offline_request, collect, write_offline

    out = check_offline_request(args.format, args.out, args.env, args.agent, args.env_kwargs)
    if args.format == "minari":
        claim_out(out, "simulate-logs", overwrite=args.overwrite)  # before the simulation
        if (out / MINARI_ID).exists():  # --overwrite of a folder it made: the dataset is written afresh
            shutil.rmtree(out / MINARI_ID)
    else:
        claim_file(out, overwrite=args.overwrite)
    data = collect(args.env, args.users, args.days, seed=args.seed, agent=args.agent, env_kwargs=args.env_kwargs,
                   device=args.device, episodes=args.format == "minari", progress=True)  # fmt: skip
    about = {"env": args.env, "agent": args.agent, "users": args.users, "days": args.days, "seed": args.seed,
             "propensity_known": data["propensity_known"]}  # fmt: skip
    summary = write_offline(args.format, data, out, about)
    if args.json:
        print_json(summary, args.json_stream)
    else:
        print(f"wrote {summary['impressions']:,} impressions ({summary['slates']:,} slates) of {args.users:,} users "
              f"over {args.days} days to {out} ({args.format})")  # fmt: skip
    return 0


def _generic(args: argparse.Namespace) -> int:
    from metarec.calibration.synthetic import simulate_logs, write_simulated_logs

    claim_file(args.out, overwrite=args.overwrite)  # before the simulation
    if Path(args.out).suffix not in (".csv", ".parquet"):
        raise ValueError(f"out: expected a name ending in .csv or .parquet for --format generic, got {args.out!r}")
    columns = simulate_logs(args.env, args.users, args.days, seed=args.seed, agent=args.agent, device=args.device,
                            env_kwargs=args.env_kwargs, progress=True)  # fmt: skip
    path = write_simulated_logs(columns, args.out)
    summary = {"out": str(path), "events": len(columns["user"]), "users": args.users, "days": args.days}
    if args.json:
        print_json(summary, args.json_stream)
    else:
        print(f"wrote {summary['events']:,} events of {args.users:,} users over {args.days} days to {path}")
    return 0
