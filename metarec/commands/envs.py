"""``metarec envs``: the registered environment ids."""

from __future__ import annotations

import argparse

from metarec.io import print_json
from metarec.registration import ENVIRONMENTS


def run(args: argparse.Namespace) -> int:
    if args.json:
        ids = [{"id": e.id, "description": e.description} for e in ENVIRONMENTS]
        print_json(ids, getattr(args, "json_stream", None))
        return 0
    width = max(len(e.id) for e in ENVIRONMENTS)
    for entry in ENVIRONMENTS:
        print(f"{entry.id:<{width}}  {entry.description}")
    return 0
