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
# requirements.txt brings unsloth 2026.10.7 with its dependencies; 2026.10.9 replaces it without
# them: .9 adds the CPU fallback the course uses without a GPU,
# but pins certifi>=2026.10.19, which PyPI does not have, so pip cannot resolve it as a whole.
$pip --no-deps "unsloth==2026.10.9" "unsloth_zoo==2026.10.9"
# PyPI's torchvision (a CUDA build) does not load next to the CPU torch, and unsloth then fails
# to import; nothing in the course uses torchvision.
$venv/bin/python -m pip uninstall -q -y torchvision
# llama-cpp-python for chapter 07 (GGUF export and inference), built from its sdist with
# llama.cpp's portable CPU flags: the native build uses AMX instructions that some VMs refuse
# (SIGILL when a quantized model runs). pip keeps the built wheel in its cache for later installs.
CMAKE_ARGS="-DGGML_NATIVE=OFF" $pip --no-binary llama-cpp-python "llama-cpp-python==0.3.36" -c constraints.txt
# The same sdist vendors llama.cpp's converter (convert_hf_to_gguf.py, gguf-py): unpack it into
# the course cache, so that exporting needs no network.
sdist_dir=$(mktemp -d)
$venv/bin/python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==0.3.36" -d "$sdist_dir"
$venv/bin/python -m lib.export unpack "$sdist_dir"/llama_cpp_python-0.3.36.tar.gz
rm -rf "$sdist_dir"
