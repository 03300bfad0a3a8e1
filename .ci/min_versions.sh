#!/usr/bin/env bash
# Proves the dependency floors in pyproject.toml: installs exactly the minimum
# declared version of every runtime dependency (and the minimum Python, when that
# interpreter is on PATH) into a fresh virtual environment, then runs the library's
# doctests, `jaxbp check` and a one-epoch training. Exits non-zero on any failure.
#
#   .ci/min_versions.sh                 # python3.11 (the requires-python floor)
#   PYTHON=/path/to/python .ci/min_versions.sh
#
# Training needs MNIST: from $JAXBP_DATA_DIR (../shared/data when it exists), else
# the cache, else a download.
set -euo pipefail
cd "$(dirname "$0")/.."

# The floors, read from pyproject.toml (the one place they are written down):
# "jax>=0.8.2" becomes "jax==0.8.2"; requires-python ">=3.11" gives python3.11.
floors() {
    python3 - "$1" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
if sys.argv[1] == "python":
    print(re.fullmatch(r">=\s*(\d+\.\d+)", project["requires-python"])[1])
else:
    for dep in project["dependencies"]:
        name, floor = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)", dep).groups()
        print(f"{name}=={floor}")
EOF
}

python="${PYTHON:-python$(floors python)}"
if ! command -v "$python" > /dev/null; then
    echo "warning: $python not found: the package floors are tested with python3" \
        "($(python3 --version)), the Python floor is not" >&2
    python=python3
fi
venv=.venv-min
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
mapfile -t pins < <(floors deps)
echo "installing ${pins[*]} with $("$python" --version)"
# The pins are constraints, so that pytest (for the doctests) cannot move them.
printf '%s\n' "${pins[@]}" > "$venv/constraints.txt"
"$venv/bin/python" -m pip install --quiet -c "$venv/constraints.txt" "${pins[@]}" -e . pytest
"$venv/bin/python" - "${pins[@]}" <<'EOF'
import importlib.metadata, sys

def release(version):  # "2.0" and "2.0.0" are the same release
    parts = [int(p) for p in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return parts

for pin in sys.argv[1:]:
    name, want = pin.split("==")
    got = importlib.metadata.version(name)
    assert release(got) == release(want), f"{name} {got} installed, {want} wanted"
print("installed:", ", ".join(sys.argv[1:]), "on Python", sys.version.split()[0])
EOF

if [ -z "${JAXBP_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
    export JAXBP_DATA_DIR="$(cd ../shared/data && pwd)"
fi
export JAX_PLATFORMS=cpu
"$venv/bin/python" -m pytest -q -p no:cacheprovider --doctest-modules jaxbp
"$venv/bin/jaxbp" check
# Offline (JAXBP_OFFLINE=1) with no local MNIST there is nothing to train on.
if ! "$venv/bin/python" -c "
import jaxbp.data as d
try:
    [d.fetch_split('mnist', s) for s in d.SPLITS]
except d.DataNotFoundError as e:
    raise SystemExit(e)
" > /dev/null; then
    echo "no MNIST files here and offline: the training run is skipped"
    exit 0
fi
run_dir="$(mktemp -d)"
trap 'rm -rf "$run_dir"' EXIT
"$venv/bin/jaxbp" train --dataset mnist --hidden 32 --epochs 1 --out "$run_dir" --quiet
echo "minimum versions OK: ${pins[*]}"
