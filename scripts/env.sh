# Sourced by start.sh and test.sh: make sure .venv exists in the repository root and
# holds pybdev (editable) with the extras named in PYBDEV_EXTRAS.
# Works on a fresh Debian 12 as root: installs python3-venv when it is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

apt_install() {
    # Install the Debian packages given that are not installed yet (one apt-get update).
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    if ((${#missing[@]})); then
        if [[ $(id -u) -ne 0 ]]; then
            echo "pybdev: need Debian packages: ${missing[*]} (run as root or install them)" >&2
            return 1
        fi
        echo "pybdev: installing Debian packages: ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

python_ok() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

if [[ ! -x "$VENV/bin/python" ]]; then
    PY="${PYTHON:-python3}"
    if ! python_ok "$PY"; then
        apt_install python3 python3-venv python3-pip
        PY=/usr/bin/python3
    fi
    python_ok "$PY" || { echo "pybdev: need Python >= 3.11 with venv" >&2; exit 1; }
    "$PY" -m venv "$VENV"
fi

# Reinstall only when pyproject.toml changed since the last install.
STAMP="$VENV/.pybdev-installed-${PYBDEV_EXTRAS:-base}"
if [[ ! -f "$STAMP" || "$ROOT/pyproject.toml" -nt "$STAMP" ]]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$ROOT${PYBDEV_EXTRAS:+[$PYBDEV_EXTRAS]}"
    touch "$STAMP"
fi
