#!/usr/bin/env bash
# Usage: check_disk.sh DIR GIB WHAT. Stops a step before it starts when DIR's disk has less than GIB GiB free: pip
# that runs out of space mid-install stops with "No space left on device" and leaves a half-built venv behind.
set -euo pipefail
dir=$1 need_gib=$2 what=$3
mkdir -p "$dir"
free_kib=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
if ((free_kib < need_gib * 1024 * 1024)); then
    echo "error: $what needs about $need_gib GiB free on the disk that holds $dir, and $((free_kib / 1024 / 1024)) GiB" \
        "are free. Free some space (an old clone's .venv, ~/.cache/ivcp) and run it again." >&2
    exit 1
fi
