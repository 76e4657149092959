#!/usr/bin/env bash
# Make the repository's virtual environment ready: .venv with Python >= 3.11 and
# `pip install -e '.[cloud,flower,postgres,plots,dev]'`.
#
# Idempotent and quick when nothing changed: a stamp file in .venv holds the sha256 of
# pyproject.toml (and the Python version); while it matches and `import agata` works,
# nothing is installed.
#
#   bash scripts/bootstrap.sh        # run it
#   source scripts/bootstrap.sh      # same, and leaves AGATA_VENV / AGATA_PYTHON set
#
# Environment:
#   AGATA_PYTHON_BIN   the interpreter to create .venv with (default: python3.11, python3)
#   AGATA_BOOTSTRAP_FORCE=1   reinstall even when the stamp matches
#
# Output is quiet; pip's full log goes to .venv/agata-bootstrap.log and its tail is
# printed when something fails.

# The body runs in a subshell so that `set -e` and friends never leak into a shell that
# sources this file.
agata_bootstrap() (
    set -euo pipefail

    local repo venv py stamp_file want log
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="$repo/.venv"
    stamp_file="$venv/.agata-bootstrap-stamp"
    log="$venv/agata-bootstrap.log"

    say() { printf 'bootstrap: %s\n' "$*" >&2; }

    python_ok() {
        # True when "$1" runs and is Python >= 3.11.
        "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
            >/dev/null 2>&1
    }

    pick_python() {
        local cand
        for cand in ${AGATA_PYTHON_BIN:-} python3.11 python3 python3.12 python3.13; do
            if command -v "$cand" >/dev/null 2>&1 && python_ok "$cand"; then
                command -v "$cand"
                return 0
            fi
        done
        return 1
    }

    install_debian_venv() {
        # Debian's python3 has no ensurepip without python3-venv (python3.11-venv).
        local py="$1" ver
        ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
            say "creating the venv failed; install Debian's venv support first:"
            say "    sudo apt-get install -y python3-venv python${ver}-venv"
            return 1
        fi
        say "installing python3-venv (Debian) ..."
        export DEBIAN_FRONTEND=noninteractive
        local pkgs=(python3-venv)
        apt-get -qq -o DPkg::Lock::Timeout=600 update >/dev/null
        # python3.11-venv on Debian 12; absent for a Python Debian does not ship.
        if apt-cache show "python${ver}-venv" >/dev/null 2>&1; then
            pkgs+=("python${ver}-venv")
        fi
        apt-get -qq -o DPkg::Lock::Timeout=600 install -y --no-install-recommends \
            "${pkgs[@]}" >/dev/null
    }

    # 1. The venv.
    if [ -x "$venv/bin/python" ] && python_ok "$venv/bin/python" \
        && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        :
    else
        if ! py="$(pick_python)"; then
            say "no Python >= 3.11 found (tried \$AGATA_PYTHON_BIN, python3.11, python3)."
            say "On Debian 12: apt-get install -y python3 python3-venv"
            return 1
        fi
        say "creating $venv with $py"
        rm -rf "$venv"
        if ! "$py" -m venv "$venv" >/dev/null 2>&1; then
            rm -rf "$venv"
            install_debian_venv "$py"
            "$py" -m venv "$venv"
        fi
    fi

    # 2. The package, when pyproject.toml (or the interpreter) changed since last time.
    want="$(
        {
            sha256sum "$repo/pyproject.toml" | cut -d' ' -f1
            "$venv/bin/python" -c 'import sys; print(sys.version)'
        } | sha256sum | cut -d' ' -f1
    )"
    if [ "${AGATA_BOOTSTRAP_FORCE:-0}" != 1 ] && [ -f "$stamp_file" ] \
        && [ "$(cat "$stamp_file")" = "$want" ] \
        && (cd / && "$venv/bin/python" -c 'import agata') >/dev/null 2>&1; then
        return 0
    fi

    say "pip install -e '.[cloud,flower,postgres,plots,dev]' (log: $log) ..."
    local started=$SECONDS
    if ! (cd "$repo" && PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install \
        --quiet --no-input -e '.[cloud,flower,postgres,plots,dev]') >"$log" 2>&1; then
        say "pip install FAILED; last lines of $log:"
        tail -n 40 "$log" >&2
        rm -f "$stamp_file"
        return 1
    fi
    echo "$want" >"$stamp_file"
    say "environment ready in $((SECONDS - started)) s"
)

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    agata_bootstrap
    exit $?
else
    # Sourced: run it, and tell the caller where the venv is.
    if agata_bootstrap; then
        AGATA_VENV="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv"
        AGATA_PYTHON="$AGATA_VENV/bin/python"
        export AGATA_VENV AGATA_PYTHON
    else
        return 1
    fi
fi
