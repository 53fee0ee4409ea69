"""pybdev.ceph where librbd cannot be loaded: importing works, and every use says why.

No cluster needed: the library paths are pointed at files that do not exist, in a child
interpreter so this process keeps its loaded libraries.
"""

from __future__ import annotations

import os
import subprocess
import sys

from pybdev import ceph

SCRIPT = """
import pybdev.ceph as c
assert c.available() is False
reason = c.unavailable_reason()
assert "/nonexistent/librbd.so.1" in reason, reason
try:
    c.Cluster({"mon_host": "127.0.0.1", "key": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="}).connect()
except c.CephUnavailable as e:
    assert e.rc < 0 and "unavailable" in str(e), str(e)
    assert "AQAAAA" not in str(e)
else:
    raise AssertionError("connect worked without librbd")
print("ok")
"""


def test_missing_librbd_is_reported_not_raised() -> None:
    env = dict(os.environ, PYBDEV_LIBRBD="/nonexistent/librbd.so.1")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_redaction() -> None:
    conf = {"mon_host": "h", "key": "secret", "Key": "s2", "rados osd op timeout": "5"}
    red = ceph.redact(conf)
    assert red == {"mon_host": "h", "key": ceph.REDACTED, "Key": ceph.REDACTED,
                   "rados osd op timeout": "5"}
    c = ceph.Cluster({"key": "secret-value", "mon host": "x"}, "u")
    assert "secret-value" not in repr(c)
    assert "secret-value" not in str(c.conf)
