"""``metarec simulate-logs``: simulated interaction logs in the generic schema."""

from __future__ import annotations

import argparse
import json

from metarec.calibration.synthetic import simulate_logs, write_simulated_logs
from metarec.runs import claim_file


def run(args: argparse.Namespace) -> int:
    claim_file(args.out, overwrite=args.overwrite)  # before the simulation
    columns = simulate_logs(args.env, args.users, args.days, seed=args.seed, agent=args.agent, device=args.device,
                            env_kwargs=args.env_kwargs)  # fmt: skip
    path = write_simulated_logs(columns, args.out)
    print(json.dumps({"out": str(path), "events": len(columns["user"]), "users": args.users, "days": args.days}))
    return 0
