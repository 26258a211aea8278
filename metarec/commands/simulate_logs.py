"""``metarec simulate-logs``: simulated interaction logs in the generic schema, or an offline dataset (parquet
impressions, the Open Bandit Dataset's CSV layout, Open Bandit Pipeline's bandit feedback, Minari)."""

from __future__ import annotations

import argparse
from pathlib import Path

from metarec.io import print_json
from metarec.runs import claim_file, claim_out


def run(args: argparse.Namespace) -> int:
    if args.format == "generic":
        return _generic(args)
    from metarec.agents.evaluation import check_env_kwargs
    from metarec.calibration.offline import check_offline_request, collect, write_offline

    check_env_kwargs(args.env, args.env_kwargs or {}, "env_kwargs")
    out = check_offline_request(args.format, args.out, args.env, args.agent, args.env_kwargs)
    if args.format == "minari":
        claim_out(out, "simulate-logs", overwrite=args.overwrite)  # before the simulation
    else:
        claim_file(out, overwrite=args.overwrite)
        if args.format == "obd":  # and the item file beside it
            from metarec.calibration.offline import OBD_ITEM_FILE

            claim_file(out.parent / OBD_ITEM_FILE, overwrite=args.overwrite)
    data = collect(args.env, args.users, args.days, seed=args.seed, agent=args.agent, env_kwargs=args.env_kwargs,
                   device=args.device, episodes=args.format == "minari", progress=True)  # fmt: skip
    about = {"env": args.env, "agent": args.agent, "users": args.users, "days": args.days, "seed": args.seed,
             "propensity_known": data["propensity_known"]}  # fmt: skip
    summary = write_offline(args.format, data, out, about)
    if args.json:
        print_json(summary, getattr(args, "json_stream", None))
    else:
        print(f"wrote {summary['impressions']:,} impressions ({summary['slates']:,} slates) of {args.users:,} users "
              f"over {args.days} days to {out} ({args.format})")  # fmt: skip
    return 0


def _generic(args: argparse.Namespace) -> int:
    from metarec.agents.evaluation import check_env_kwargs
    from metarec.calibration.synthetic import simulate_logs, write_simulated_logs

    check_env_kwargs(args.env, args.env_kwargs or {}, "env_kwargs")
    claim_file(args.out, overwrite=args.overwrite)  # before the simulation
    if Path(args.out).suffix not in (".csv", ".parquet"):
        raise ValueError(f"out: expected a name ending in .csv or .parquet for --format generic, got {args.out!r}")
    columns = simulate_logs(args.env, args.users, args.days, seed=args.seed, agent=args.agent, device=args.device,
                            env_kwargs=args.env_kwargs, progress=True)  # fmt: skip
    path = write_simulated_logs(columns, args.out)
    summary = {"out": str(path), "events": len(columns["user"]), "users": args.users, "days": args.days}
    if args.json:
        print_json(summary, getattr(args, "json_stream", None))
    else:
        print(f"wrote {summary['events']:,} events of {args.users:,} users over {args.days} days to {path}")
    return 0
