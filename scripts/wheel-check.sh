#!/usr/bin/env bash
# The installed product, as a user gets it: build the wheel, install it in fresh venvs in
# an empty folder (no checkout in sight) and use it.
#
#   bash scripts/wheel-check.sh [python]     # scripts/test.sh runs it as a step
#
# 1. `pip wheel --no-deps .` -> agata-*.whl (the example tasks and hooks inside).
# 2. venv "demo": `pip install 'agata-*.whl[cloud,flower]'`, then `agata demo --json` from
#    an empty folder must finish the digits task.
# 3. venv "edge": `pip install agata-*.whl` (the core = what a device needs): the agent
#    and the edge gateway import, the cloud's web stack is absent, and `agata cloud run`
#    ends with the hint to install the cloud extra.
# The installed size of both venvs is printed (docs/dependencies.md records it).
# Exit code 0 only when every check passed. Temporary files are removed on exit
# (AGATA_WHEEL_KEEP=1 keeps them and prints where).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-${AGATA_PYTHON_BIN:-$REPO/.venv/bin/python}}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/agata-wheel-check.XXXXXX")"
cleanup() {
    if [ "${AGATA_WHEEL_KEEP:-0}" = 1 ]; then
        echo "wheel-check: files kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
say() { printf 'wheel-check: %s\n' "$*"; }
export PIP_DISABLE_PIP_VERSION_CHECK=1 FLWR_TELEMETRY_ENABLED=0
# pip's noise about file:// indexes this machine's pip.conf names but lacks.
quiet_pip() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

say "building the wheel"
quiet_pip "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$REPO"
WHEEL="$(ls "$WORK"/dist/agata-*.whl)"
say "built $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KB)"
# Asked of the archive itself: `zipfile -l | grep -q` under pipefail fails whenever grep
# stops reading at its first match while the listing is still being written (SIGPIPE).
if ! "$PY" -c 'import sys, zipfile; sys.exit(sys.argv[2] not in zipfile.ZipFile(sys.argv[1]).namelist())' \
    "$WHEEL" "agata/examples/tasks/digits/client.py"; then
    say "FAILED: the wheel holds no example tasks"
    exit 1
fi
# A venv made from the base interpreter, not from the repository's venv.
BASE="$("$PY" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"

mkdir -p "$WORK/empty"
say "venv with agata[cloud,flower] (pip cache: flwr is ~70 MB to download otherwise)"
"$BASE" -m venv "$WORK/demo-venv"
quiet_pip "$WORK/demo-venv/bin/python" -m pip install --quiet "agata[cloud,flower] @ file://$WHEEL"
say "agata demo, from an empty folder"
(cd "$WORK/empty" && "$WORK/demo-venv/bin/agata" demo --json >"$WORK/demo.json")
"$WORK/demo-venv/bin/python" - "$WORK/demo.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
assert data["finished"] is True, data
print(f"wheel-check: demo finished, accuracy {data['accuracy']:.3f}, "
      f"{data['demo_wall_seconds']:.1f} s")
PY

say "venv with agata alone (the edge)"
"$BASE" -m venv "$WORK/edge-venv"
quiet_pip "$WORK/edge-venv/bin/python" -m pip install --quiet "$WHEEL"
(cd "$WORK/empty" && "$WORK/edge-venv/bin/python" - <<'PY'
import importlib.util
import agata.cli.main, agata.edge.agent, agata.edge.edge_gateway, agata.edge.hooks
from agata.resources import example_path
for name in ("fastapi", "uvicorn", "starlette", "sqlalchemy", "flwr"):
    assert importlib.util.find_spec(name) is None, f"{name} is installed with the core alone"
assert example_path("hooks", "gpio-led").is_file()
print("wheel-check: the edge agent imports without the cloud's web stack")
PY
)
"$WORK/edge-venv/bin/agata" edge run --help >/dev/null
set +e
(cd "$WORK/empty" && "$WORK/edge-venv/bin/agata" cloud run --data-dir "$WORK/cloud-data") \
    >"$WORK/cloud.out" 2>&1
rc=$?
set -e
if [ "$rc" -ne 2 ] || ! grep -q "pip install 'agata\[cloud\]'" "$WORK/cloud.out"; then
    say "FAILED: agata cloud run without the cloud extra (exit $rc):"
    cat "$WORK/cloud.out"
    exit 1
fi
say "agata cloud run without the cloud extra: $(tr -d '\n' <"$WORK/cloud.out")"

size() { du -sm "$1" | cut -f1; }
say "installed size: core (edge) $(size "$WORK/edge-venv") MB," \
    "cloud+flower $(size "$WORK/demo-venv") MB (each a whole venv with pip)"
say "ok"
