#!/usr/bin/env bash
# README command 2: install everything the tests need (Debian packages listed in
# deps/apt-test.txt, Python packages from the [test] extra), check style (ruff) and types
# (mypy), and run the whole suite.
# Arguments go to pytest.
PYBDEV_EXTRAS=test source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
mapfile -t PKGS < <(grep -v '^\s*#' "$ROOT/deps/apt-test.txt" | awk 'NF {print $1}')
apt_install "${PKGS[@]}"
cd "$ROOT"
"$VENV/bin/ruff" check pybdev tests scripts bench examples
"$VENV/bin/mypy"  # pybdev/, as configured in pyproject.toml
exec "$VENV/bin/python" -m pytest "$@"
