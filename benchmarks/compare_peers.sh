#!/usr/bin/env bash
# metarec and its peers (RecSim, RecSim NG) measured in one invocation, on the same machine, so the
# ratios compare like with like. Prints one JSON line per measurement, then one summary line with
# the ratios. Peers' venvs come from benchmarks/peers/setup.sh (default $PEERS=~/.cache/metarec-peers);
# their benchmark scripts are in benchmarks/peers/. A peer whose venv is missing is skipped.
#   bash benchmarks/compare_peers.sh [--quick]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/.."
PEERS=${PEERS:-$HOME/.cache/metarec-peers}
PY=${PY:-.venv/bin/python}
STEPS_SINGLE=20000; RUNS=3
[ "${1:-}" = "--quick" ] && { STEPS_SINGLE=5000; RUNS=1; }
out=$(mktemp)
[ -d "$PEERS" ] || echo "no peers in $PEERS: run bash $HERE/peers/setup.sh to measure them too" >&2
run() { "$@" | grep '^{' | tee -a "$out"; }

# Single-user env on RecSim's interest-evolution workload (random slates, resets included).
run $PY benchmarks/sim_throughput.py --api single --env metarec/RecSimInterestEvolution-v0 --steps $STEPS_SINGLE --runs $RUNS
for venv in venv-recsim-notf venv-recsim; do
  [ -x "$PEERS/$venv/bin/python" ] && run "$PEERS/$venv/bin/python" "$HERE/peers/bench_recsim.py" --env interest_evolution --steps $STEPS_SINGLE --runs $RUNS
done
# Batched users on RecSim NG's interest-evolution workload (100 documents, slate 2, 100 steps).
for users in 100 1000 10000; do
  run $PY benchmarks/sim_throughput.py --env metarec/RecSimNGInterestEvolution-v0 --users $users --steps 100 --runs $RUNS --no-ground-truth
  run $PY benchmarks/sim_throughput.py --env metarec/RecSimNGInterestEvolution-v0 --users $users --steps 100 --runs $RUNS
done
# The flagship env at 100,000 users with ground truth on (the oracle, true utilities and regret in info every
# step), against RecSim NG's rate at 10,000 users.
run $PY benchmarks/sim_throughput.py --env metarec/DriftingUsers-v0 --users 100000 --steps 50 --runs $RUNS
run $PY benchmarks/sim_throughput.py --env metarec/DriftingUsers-v0 --users 100000 --steps 50 --runs $RUNS --compact-observation
[ -x "$PEERS/venv-rsng/bin/python" ] && run "$PEERS/venv-rsng/bin/python" "$HERE/peers/bench_recsim_ng.py" --app interest_evolution --users 100 1000 10000 --steps 100 --runs $RUNS

$PY - "$out" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def rate(pred):
    found = [r["user_steps_per_s"] for r in rows if pred(r)]
    return found[0] if found else None
summary = {"summary": "ratios, same run"}
ours = rate(lambda r: r.get("api") == "single")
for peer in ("recsim-no-tf", "recsim"):
    theirs = rate(lambda r, p=peer: r.get("peer") == p)
    if ours and theirs:
        summary[f"single_vs_{peer}"] = round(ours / theirs, 2)
for users in (100, 1000, 10000):
    ng = rate(lambda r, u=users: r.get("peer") == "recsim-ng" and r["users"] == u)
    for gt in (False, True):
        mine = rate(lambda r, u=users, g=gt: r.get("api") == "vector" and r["users"] == u and r["ground_truth"] == g)
        if ng and mine:
            summary[f"vector_vs_recsim_ng_{users}{'_ground_truth' if gt else ''}"] = round(mine / ng, 2)
ng = rate(lambda r: r.get("peer") == "recsim-ng" and r["users"] == 10000)
for compact in (False, True):
    flagship = rate(
        lambda r, c=compact: r.get("env") == "metarec/DriftingUsers-v0" and r.get("compact_observation") == c
    )
    if flagship and ng:
        name = "flagship_100000_ground_truth" + ("_compact" if compact else "") + "_vs_recsim_ng_10000"
        summary[name] = round(flagship / ng, 2)
print(json.dumps(summary))
PY
rm -f "$out"
