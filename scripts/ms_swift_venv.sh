#!/usr/bin/env bash
# Build (once) and print the path of a separate venv holding ms-swift, the peer framework that
# benchmarks/vs_ms_swift.py times against IVCP. ms-swift pulls its own dependency set (modelscope, its own
# transformers range), so it never shares the project's venv; it keeps our torch pins (constraints.txt) so both
# frameworks run the same kernels. The venv lives outside the clone (IVCP_MS_SWIFT_VENV, default
# ~/.cache/ivcp/ms-swift-venv) and is reused while its stamp is present and `import swift` works. Not part of
# `make test`.
set -euo pipefail
SWIFT_VERSION=4.6.0
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${IVCP_MS_SWIFT_VENV:-$HOME/.cache/ivcp/ms-swift-venv}"
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.ivcp-ms-swift-$SWIFT_VERSION"

CHECK='import importlib.metadata as m, swift, swift.cli.sft, decord, av, qwen_vl_utils, torch; assert m.version("ms-swift") == "'"$SWIFT_VERSION"'"'
ready() { test -f "$STAMP" && "$VENV/bin/python" -c "$CHECK" >/dev/null 2>&1; }

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9  # concurrent callers build once
if ready; then
    echo "$VENV"
    exit 0
fi
echo "building ms-swift $SWIFT_VERSION venv in $VENV (6.6 GiB on disk)" >&2
rm -rf "$VENV"
bash "$(dirname "$0")/check_disk.sh" "$(dirname "$VENV")" 7 "building the ms-swift venv (6.6 GiB)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --disable-pip-version-check --progress-bar off -c "$REPO/constraints.txt" \
    "ms-swift==$SWIFT_VERSION" qwen-vl-utils decord av psutil torchvision  # qwen-vl-utils imports torchvision
"$VENV/bin/python" -c "$CHECK"
touch "$STAMP"
echo "$VENV"
