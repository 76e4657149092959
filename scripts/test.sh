#!/usr/bin/env bash
# THE test command: the same on a laptop and in CI (.ci/run calls it).
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -k bus -x       # extra arguments go to pytest
#
# Steps: bootstrap .venv -> start private RabbitMQ + PostgreSQL (scripts/services.sh) ->
# ruff check -> ruff format --check -> mypy -> pytest -> the wheel (scripts/wheel-check.sh:
# build it, install it in fresh venvs in an empty folder, run `agata demo` there, check
# the edge-only install). Every step runs even when an
# earlier one failed; the exit code is non-zero when any failed. pytest collecting no
# test (its exit code 5) is a failure too. The services are stopped on every exit.
#
# Output: the console, and test-output/ (one log per step, junit.xml, services' logs).
#
# Environment:
#   AGATA_SERVICES_DIR      services' state folder (default: a fresh one per run, so
#                           parallel runs never share or stop each other's services)
#   AGATA_TEST_SKIP_LINT=1  skip ruff and mypy (a local shortcut; CI never sets it)
#   AGATA_TEST_SKIP_WHEEL=1 skip the wheel step (a local shortcut; CI never sets it)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO="$PWD"
OUT="$REPO/test-output"
VENV="$REPO/.venv"

banner() { printf '\n==== %s ====\n' "$*"; }

# 0. As root, task processes run as the task user `nobody` (docs/security.md), which must
# read the checkout and its venv. A checkout inside a folder closed to other users (a
# private temporary folder, /root) is tested from a copy in a folder it can read; the
# copy's test-output/ is brought back. Nothing else changes.
if [ "$(id -u)" -eq 0 ] && [ -z "${AGATA_TEST_RELOCATED:-}" ] && command -v setpriv >/dev/null &&
    ! setpriv --reuid=65534 --regid=65534 --clear-groups -- test -r "$REPO/pyproject.toml" \
        2>/dev/null; then
    COPY="$(mktemp -d "${TMPDIR:-/tmp}/agata-test-copy.XXXXXX")"
    chmod 755 "$COPY"
    echo "test.sh: the task user (nobody) cannot read $REPO (a folder on its path is" \
        "closed to other users); testing a copy in $COPY"
    (cd "$REPO" && tar --exclude=./.venv --exclude=./test-output -cf - .) | (cd "$COPY" && tar -xf -)
    AGATA_TEST_RELOCATED=1 bash "$COPY/scripts/test.sh" "$@"
    rc=$?
    rm -rf "$OUT"
    cp -r "$COPY/test-output" "$OUT" 2>/dev/null
    rm -rf "$COPY"
    exit "$rc"
fi

# 1. Environment.
banner "bootstrap"
if ! bash "$REPO/scripts/bootstrap.sh"; then
    echo "test.sh: bootstrap failed; nothing was tested" >&2
    exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT"

declare -a STEP_NAMES=() STEP_RESULTS=()
FAILED=0
record() { # name rc [note]
    STEP_NAMES+=("$1")
    if [ "$2" -eq 0 ]; then
        STEP_RESULTS+=("ok")
    else
        STEP_RESULTS+=("FAILED (exit $2)${3:+ - $3}")
        FAILED=1
    fi
}

# 2. Services, stopped on every exit.
export AGATA_SERVICES_DIR="${AGATA_SERVICES_DIR:-/tmp/agata-services-$(id -u)-test-$$}"
SERVICES_STARTED=0
stop_services() {
    [ "$SERVICES_STARTED" = 1 ] || return 0
    trap '' INT TERM HUP # finish stopping even when signalled again
    mkdir -p "$OUT/services"
    # Keep the services' logs next to the test output (small; data folders are not copied).
    (
        cd "$AGATA_SERVICES_DIR" 2>/dev/null || exit 0
        cp -r rabbitmq/log "$OUT/services/rabbitmq-log" 2>/dev/null
        cp rabbitmq/out.log "$OUT/services/rabbitmq-out.log" 2>/dev/null
        cp postgres/server.log "$OUT/services/postgres.log" 2>/dev/null
    ) || true
    bash "$REPO/scripts/services.sh" stop || true
    SERVICES_STARTED=0
}
# shellcheck disable=SC2317  # invoked by the EXIT trap
on_exit() {
    local rc=$?
    stop_services
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

banner "services"
SECONDS_BEFORE=$SECONDS
SERVICES_STARTED=1
if bash "$REPO/scripts/services.sh" start 2>&1 | tee "$OUT/services-start.log"; then
    # shellcheck disable=SC1090
    if eval "$(bash "$REPO/scripts/services.sh" env)"; then
        record services 0
        echo "services up in $((SECONDS - SECONDS_BEFORE)) s:" \
            "$AGATA_TEST_AMQP_URL $AGATA_TEST_PG_URL $AGATA_TEST_CHROMIUM"
    else
        record services 1 "services.sh env"
    fi
else
    record services 1 "see test-output/services-start.log; tests needing them will fail"
fi

# Tests that need a service fail (not skip) when it is missing.
export AGATA_REQUIRE_SERVICES=1
export FLWR_TELEMETRY_ENABLED=0
export PYTHONDONTWRITEBYTECODE=1
export PATH="$VENV/bin:$PATH"

run_step() { # name logfile command...
    local name="$1" log="$2" rc
    shift 2
    banner "$name"
    "$@" 2>&1 | tee "$OUT/$log"
    rc=${PIPESTATUS[0]}
    record "$name" "$rc"
    return 0
}

# 3. Lint, format, types.
if [ "${AGATA_TEST_SKIP_LINT:-0}" = 1 ]; then
    echo "AGATA_TEST_SKIP_LINT=1: ruff and mypy skipped"
else
    run_step "ruff check" ruff-check.txt "$VENV/bin/ruff" check agata tests
    run_step "ruff format --check" ruff-format.txt "$VENV/bin/ruff" format --check agata tests
    run_step "mypy" mypy.txt "$VENV/bin/mypy"
fi

# 4. Tests.
banner "pytest"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --junitxml="$OUT/junit.xml" "$@" 2>&1 |
    tee "$OUT/pytest.txt"
PYTEST_RC=${PIPESTATUS[0]}
if [ "$PYTEST_RC" -eq 5 ]; then
    echo "test.sh: pytest collected NO tests (exit 5) - that is a failure: a test run" \
        "must run tests." >&2
    record pytest 5 "no tests collected"
else
    record pytest "$PYTEST_RC"
fi

# 5. The product as installed from its wheel, outside the checkout.
stop_services
if [ "${AGATA_TEST_SKIP_WHEEL:-0}" = 1 ]; then
    echo "AGATA_TEST_SKIP_WHEEL=1: the wheel step skipped"
else
    run_step "wheel" wheel.txt bash "$REPO/scripts/wheel-check.sh" "$VENV/bin/python"
fi

# 6. Summary.
banner "summary"
for i in "${!STEP_NAMES[@]}"; do
    printf '  %-22s %s\n' "${STEP_NAMES[$i]}" "${STEP_RESULTS[$i]}"
done
echo "  output in test-output/"
# pytest's closing line last, so it is what a reader (or CI) sees at the bottom.
LAST_LINE="$(grep -v '^[[:space:]]*$' "$OUT/pytest.txt" | tail -n 1)"
[ -n "$LAST_LINE" ] && echo "$LAST_LINE"
if [ "$FAILED" -ne 0 ]; then
    echo "test.sh: FAILED" >&2
    exit 1
fi
exit 0
