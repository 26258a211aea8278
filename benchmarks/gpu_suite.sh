#!/usr/bin/env bash
# The GPU suite in one command, for a machine with one CUDA GPU and no network. Prints one JSON line.
#
#   bash benchmarks/gpu_wheels.sh      # here, with network: build/gpu_wheels (carry it with the checkout)
#   bash benchmarks/gpu_suite.sh       # there: installs from build/gpu_wheels, then measures (8 minutes or less)
#
# It installs metarec and its pure-Python dependencies into a venv that sees the machine's own packages (torch,
# numpy and whatever else is there), then runs, each under its own time limit:
#   * the tests marked gpu: CPU-CUDA agreement of every core env, a churning catalog, the slate policy and RL²;
#   * simulator throughput of the flagship env at 1M users and, with the compact observation, 10M users
#     (user-steps/s, peak CUDA memory per user), and at 10M users with ground truth off;
#   * where a 1M-user step's time goes, and the step compiled (benchmarks/step_profile.py);
#   * batched PPO's env-steps/s on the flagship env;
#   * RL² meta-training throughput on configs/meta_gpu.yaml, a fixed number of updates.
# Logs and each benchmark's own JSON line go to $OUT (or build/gpu_suite). Record the figures in BENCHMARKS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-build/gpu_suite}
mkdir -p "$LOGS"
rm -f "$LOGS"/*.status "$LOGS/tests.xml"  # a step left out (GPU_SUITE_ONLY) must not report an earlier run
VENV=build/gpu-venv
WHEELS=build/gpu_wheels
started=$(date +%s)

fail() {  # one JSON line that says what went wrong, and where the log is
    python3 -c 'import json, sys; print(json.dumps({"suite": "gpu", "error": sys.argv[1], "log": sys.argv[2]}))' "$1" "$2"
    exit 1
}

# GPU_SUITE_PYTHON=PATH uses that interpreter as it is (no venv, no install), GPU_SUITE_DEVICE=cpu runs every
# step on the CPU and GPU_SUITE_SMALL=1 shrinks every size 100-fold: together a dry run of the suite's mechanics on
# a machine without a GPU. GPU_SUITE_ONLY="tests meta" runs only the steps named.
DEVICE=${GPU_SUITE_DEVICE:-cuda}
if [ "${GPU_SUITE_SMALL:-0}" = 1 ]; then
    SIM_USERS=(10000 100000) PPO_ENVS=1024 PPO_STEPS=20000
else
    SIM_USERS=(1000000 10000000) PPO_ENVS=65536 PPO_STEPS=2000000
fi
if [ -n "${GPU_SUITE_PYTHON:-}" ]; then
    PY=$GPU_SUITE_PYTHON
    : > "$LOGS/install.log"
else
    [ -d "$WHEELS" ] || fail "no $WHEELS: run benchmarks/gpu_wheels.sh where there is network and carry it" ""
    # The machine's python may itself be a venv, whose packages a venv made with --system-site-packages would
    # not see; so the suite's venv reaches the machine's site-packages through a .pth file, and pip installs
    # from the wheels only what is not there already.
    BASE=${GPU_SUITE_BASE_PYTHON:-python3}
    "$BASE" -c "import torch, numpy; assert '$DEVICE' != 'cuda' or torch.cuda.is_available(), 'no CUDA device'" > "$LOGS/install.log" 2>&1 \
        || fail "this machine's python has no torch with CUDA (or no numpy)" "$LOGS/install.log"
    rm -rf "$VENV"
    "$BASE" -m venv --without-pip "$VENV" >> "$LOGS/install.log" 2>&1 || fail "venv" "$LOGS/install.log"
    PY=$VENV/bin/python
    # site.addsitedir, not bare paths: the .pth files of the machine's site-packages (editable installs) apply too
    "$BASE" -c 'import sysconfig; print("\n".join(f"import site; site.addsitedir({p!r})" for p in dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))))' \
        > "$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/machine-site.pth" \
        || fail "linking the machine's site-packages" "$LOGS/install.log"
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-deps --force-reinstall metarec >> "$LOGS/install.log" 2>&1 \
        || fail "installing metarec's wheel" "$LOGS/install.log"
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" -r benchmarks/gpu_requirements.txt \
        >> "$LOGS/install.log" 2>&1 || fail "installing the dependencies from $WHEELS" "$LOGS/install.log"
    "$PY" -c "import metarec, torch; print('metarec', metarec.__version__, 'torch', torch.__version__)" \
        >> "$LOGS/install.log" 2>&1 || fail "importing metarec" "$LOGS/install.log"
fi

step() {  # step NAME SECONDS COMMAND...: runs a step under a limit; its last stdout line is its JSON
    local name=$1 limit=$2
    shift 2
    if [ -n "${GPU_SUITE_ONLY:-}" ] && [[ " $GPU_SUITE_ONLY " != *" $name "* ]]; then return; fi
    local t0=$(date +%s)
    timeout "$limit" "$@" > "$LOGS/$name.out" 2> "$LOGS/$name.err"
    echo "$? $(( $(date +%s) - t0 ))" > "$LOGS/$name.status"
}

# The tests spread over the machine's cores where pytest-xdist is there (one GPU serves them all).
WORKERS=$("$PY" -c 'import os, xdist; print(f"-n {min(8, os.cpu_count())}")' 2>/dev/null)
step tests "${GPU_SUITE_TESTS_LIMIT:-150}" "$PY" -P -m pytest -q $WORKERS --durations=5 -m gpu -p no:cacheprovider tests/test_gpu.py --junitxml "$LOGS/tests.xml"
step sim_1m 60 "$PY" benchmarks/sim_throughput.py --device "$DEVICE" --users "${SIM_USERS[0]}" --steps 50 --runs 3
step sim_10m 90 "$PY" benchmarks/sim_throughput.py --device "$DEVICE" --users "${SIM_USERS[1]}" --steps 20 --runs 2 --compact-observation
step sim_10m_no_gt 60 "$PY" benchmarks/sim_throughput.py --device "$DEVICE" --users "${SIM_USERS[1]}" --steps 20 --runs 2 --compact-observation --no-ground-truth
step profile 120 "$PY" benchmarks/step_profile.py --device "$DEVICE" --users "${SIM_USERS[0]}" --steps 10 --top 8
step ppo 90 "$PY" benchmarks/train_throughput.py --algo batched-ppo --device "$DEVICE" --num-envs "$PPO_ENVS" --steps "$PPO_STEPS"
step meta 90 "$PY" benchmarks/meta_throughput.py --config configs/meta_gpu.yaml --device "$DEVICE" --updates 3

"$PY" - "$LOGS" "$started" <<'PYEOF'
import json, sys, time
import xml.etree.ElementTree as ET
from pathlib import Path

logs, started = Path(sys.argv[1]), float(sys.argv[2])
line = {"suite": "gpu", "logs": str(logs)}
for name in ("tests", "sim_1m", "sim_10m", "sim_10m_no_gt", "profile", "ppo", "meta"):
    if not (logs / f"{name}.status").is_file():  # left out by GPU_SUITE_ONLY
        continue
    code, seconds = (logs / f"{name}.status").read_text().split()
    entry = {"exit": int(code), "seconds": int(seconds), "timed_out": code in ("124", "137")}
    lines = [l for l in (logs / f"{name}.out").read_text().splitlines() if l.startswith("{")]
    if name == "tests" and (logs / "tests.xml").is_file():
        suite = ET.parse(logs / "tests.xml").getroot().find("testsuite")
        entry.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
    elif lines:
        entry["result"] = json.loads(lines[-1])
    line[name] = entry
line["seconds"] = round(time.time() - started)
try:
    import torch
    line["gpu"] = torch.cuda.get_device_name()
    line["torch"] = torch.__version__
except Exception as error:  # the line is printed whatever happened
    line["gpu"] = repr(error)
print(json.dumps(line))
PYEOF
