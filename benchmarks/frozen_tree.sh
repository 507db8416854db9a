#!/bin/bash
# Usage: benchmarks/frozen_tree.sh COMMIT DEST
# The installed package tree (build/'s layout, as `make setup` links it) with every file as at COMMIT, copied into
# DEST/driftloop (a file the commit lacks: the working copy). Put DEST first on PYTHONPATH to run that version's
# code, e.g. two versions of the prediction log in one benchmark session, unchanged by edits to the working tree
# meanwhile:
#   benchmarks/frozen_tree.sh c311fcb /tmp/old && PYTHONPATH=/tmp/old .venv/bin/python benchmarks/replica_bench.py
set -euo pipefail
commit=$1
dest=$(realpath -m "$2")
root=$(git rev-parse --show-toplevel)
tree=$root/build/__editable__.driftloop-0.1.0-py3-none-any
[ -d "$tree/driftloop" ] || { echo "$tree: missing; run make setup first" >&2; exit 2; }
source=$(mktemp -d)
trap 'rm -rf "$source"' EXIT
git -C "$root" archive "$commit" | tar -x -C "$source"
rm -rf "$dest/driftloop"
(cd "$tree" && find driftloop -type l) | while read -r link; do
  target=$(readlink "$tree/$link")
  relative=${target#"$root"/}
  mkdir -p "$dest/$(dirname "$link")"
  if [ -f "$source/$relative" ]; then cp "$source/$relative" "$dest/$link"; else cp "$target" "$dest/$link"; fi
done
echo "$dest/driftloop: the package as at $(git -C "$root" rev-parse --short "$commit")"
