"""Fixtures shared by every Ceph test: one throwaway cluster per test session.

``ceph_cluster`` (session scope) starts the cluster on first use (~9 s) and stops it at the
end of the session, also when tests fail or the run is interrupted; if the pytest process
is killed outright, the daemons die with it (PR_SET_PDEATHSIG, see cluster.py). Where the
Ceph packages are missing, the tests that use it skip and say which programs are missing.

Environment: ``PYBDEV_CEPH_OBJECTSTORE=bluestore`` runs the OSD on a sparse file instead of
memory; ``PYBDEV_CEPH_KEEP=1`` keeps the cluster directory's logs even after a clean run.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator

import pytest

from .cluster import CephCluster, ClusterError, unavailable_reason


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    """A running cluster: ``.conf_path``, ``.keyring_path``, ``.client_name``,
    ``.client_id``, ``.client_key``, ``.mon_addr``/``.mon_host``, ``.pool`` (``rbd``),
    ``.client_conf()``, ``.ceph(...)``, ``.rbd(...)``, ``.run(prog, ...)``, ``.pids()``."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("ceph")
    cluster = CephCluster(
        root, objectstore=os.environ.get("PYBDEV_CEPH_OBJECTSTORE", "memstore")
    )
    # Session teardown covers failures and Ctrl-C; atexit covers a pytest that exits
    # without reaching it. stop() is idempotent.
    atexit.register(cluster.stop)
    try:
        cluster.start()
    except ClusterError as e:
        pytest.fail(f"the Ceph test cluster did not start: {e}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)
        if not os.environ.get("PYBDEV_CEPH_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def image_name(ceph_cluster: CephCluster) -> Iterator[str]:
    """A fresh image name in pool ``rbd``; whatever image has it is removed afterwards."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    with contextlib.suppress(ClusterError, OSError):
        ceph_cluster.rbd("rm", "--no-progress", f"{ceph_cluster.pool}/{name}", check=False)
