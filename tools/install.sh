#!/usr/bin/env bash
# Install the course's stack into the virtual environment $1 (created if missing).
set -euo pipefail
venv=${1:-.venv}
cd "$(dirname "$0")/.."
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip="$venv/bin/python -m pip install -q"
$venv/bin/python -m pip install -q --upgrade pip
# constraints.txt pins torch to the CPU build; any other torch spec pulls GBs of CUDA packages.
$pip -r requirements.txt -c constraints.txt
# unsloth: 2026.10.7 brings the dependencies (its pins match requirements.txt) ...
$pip "unsloth==2026.10.7" "unsloth_zoo==2026.10.7" -c constraints.txt
# ... and 2026.10.9 replaces it without them: .9 adds the CPU fallback the course uses without a GPU,
# but pins certifi>=2026.10.19, which PyPI does not have, so pip cannot resolve it as a whole.
$pip --no-deps "unsloth==2026.10.9" "unsloth_zoo==2026.10.9"
# PyPI's torchvision (a CUDA build) does not load next to the CPU torch, and unsloth then fails
# to import; nothing in the course uses torchvision.
$venv/bin/python -m pip uninstall -q -y torchvision
