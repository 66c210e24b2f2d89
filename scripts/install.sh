#!/usr/bin/env bash
# Create .venv and install the harness, choosing the torch build for this machine:
#   - no NVIDIA GPU: the CPU build of torch (a local CPU wheel if pip's find-links
#     has one, else the index in HARNESS_TORCH_CPU_INDEX if set);
#   - an NVIDIA GPU (nvidia-smi works): the registry's CUDA build, plus the `full`
#     extra (torchvision, for the VLM ranker's Qwen-VL processors), which needs a CUDA
#     torch next to it.
# Both get the `deepspeed` extra (ZeRO-2; on CPU its engine runs over gloo, which the
# tests use; its ops compile just in time, so nothing is built at install).
# Extras to add: HARNESS_EXTRAS (default "dev,trackers": the tests, and TensorBoard for
# `--log-with tensorboard`, whose test reads the event files back). Re-running is cheap: a
# stamp file records what was installed for which pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${HARNESS_VENV:-.venv}
EXTRAS=${HARNESS_EXTRAS:-dev,trackers}
TORCH_VERSION=$(sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml)
NUMPY_VERSION=$(sed -n 's/^ *"numpy==\([^"]*\)".*/\1/p' pyproject.toml)

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  FLAVOUR=cuda
  EXTRAS="$EXTRAS,deepspeed,full"
else
  FLAVOUR=cpu
  EXTRAS="$EXTRAS,deepspeed"
fi

STAMP="$VENV/.harness-installed"
WANT="$FLAVOUR $EXTRAS $(sha256sum pyproject.toml | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "error: Python >= 3.11 is required ($("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
}
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

echo "installing torch==$TORCH_VERSION ($FLAVOUR build) into $VENV" >&2
if [[ $FLAVOUR == cpu ]]; then
  # A '+cpu' wheel sorts above the plain release, so an extra CPU index wins when given.
  "${PIP[@]}" "torch==$TORCH_VERSION" "numpy==$NUMPY_VERSION" \
    ${HARNESS_TORCH_CPU_INDEX:+--extra-index-url "$HARNESS_TORCH_CPU_INDEX"}
else
  "${PIP[@]}" "torch==$TORCH_VERSION" "numpy==$NUMPY_VERSION"
fi
"$VENV/bin/python" - "$FLAVOUR" <<'PYCHECK'
import sys, torch
flavour = sys.argv[1]
if flavour == "cpu" and torch.version.cuda is not None:
    print(f"note: installed torch {torch.__version__} is a CUDA build on a machine without an NVIDIA GPU; "
          "it works on CPU but is large. Set HARNESS_TORCH_CPU_INDEX to a CPU wheel index to avoid it.",
          file=sys.stderr)
PYCHECK

echo "installing the harness with extras [$EXTRAS]" >&2
"${PIP[@]}" -e ".[$EXTRAS]"
echo "$WANT" > "$STAMP"
