"""``metarec simulate-logs``: simulated interaction logs in the generic schema."""

from __future__ import annotations

import argparse

from metarec.calibration.synthetic import simulate_logs, write_simulated_logs
from metarec.io import print_json
from metarec.runs import claim_file


def run(args: argparse.Namespace) -> int:
    claim_file(args.out, overwrite=args.overwrite)  # before the simulation
    columns = simulate_logs(args.env, args.users, args.days, seed=args.seed, agent=args.agent, device=args.device,
                            env_kwargs=args.env_kwargs, progress=True)  # fmt: skip
    path = write_simulated_logs(columns, args.out)
    summary = {"out": str(path), "events": len(columns["user"]), "users": args.users, "days": args.days}
    if args.json:
        print_json(summary, args.json_stream)
    else:
        print(f"wrote {summary['events']:,} events of {args.users:,} users over {args.days} days to {path}")
    return 0
