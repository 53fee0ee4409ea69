#!/usr/bin/env bash
# README command 1: set up .venv and start the target on the embedded default config
# (etc/default.json). Extra arguments go to pybdev, e.g. -r /tmp/my.sock.
PYBDEV_EXTRAS=fast source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
case " $* " in
    *" --json "* | *" -c "* | *" --config "*) ;;
    *) set -- --json "$ROOT/etc/default.json" "$@" ;;
esac
exec "$VENV/bin/pybdev" "$@"
