#!/bin/bash
# Builds the peer simulators' virtual environments under $PEERS (default: ~/.cache/metarec-peers):
# venv-recsim (RecSim 0.2.4 on TensorFlow 2.15.1), venv-recsim-notf (recsim-no-tf 0.2.3) and venv-rsng
# (RecSim NG 0.1.2). The benchmark scripts stay in benchmarks/peers/ and run with these venvs' Pythons.
# TensorFlow 2.15.1 needs Python 3.9-3.11 as python3; the pins are ones that resolve and install.
#   bash benchmarks/peers/setup.sh
set -e
PEERS=${PEERS:-$HOME/.cache/metarec-peers}
mkdir -p "$PEERS"
cd "$PEERS"
[ -x venv-recsim/bin/python ] || { python3 -m venv venv-recsim && venv-recsim/bin/pip install -q recsim==0.2.4 tensorflow==2.15.1 dopamine-rl==4.0.9 "numpy<2"; }
[ -x venv-recsim-notf/bin/python ] || { python3 -m venv venv-recsim-notf && venv-recsim-notf/bin/pip install -q recsim-no-tf==0.2.3 six; }
[ -x venv-rsng/bin/python ] || { python3 -m venv venv-rsng && venv-rsng/bin/pip install -q recsim-ng==0.1.2 tensorflow==2.15.1 tensorflow-probability==0.23.0 "scipy<1.11" "numpy<2" gym==0.24.1; }
echo "peers ready in $PEERS"
