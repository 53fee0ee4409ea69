"""librados: a cluster connection and per-pool I/O contexts.

Every call here blocks (connect talks to the monitors, ioctx creation may fetch a map):
callers on an event loop run them in a thread (``asyncio.to_thread``). The GIL is released
while librados runs.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

from pybdev.ceph import _ffi
from pybdev.ceph.errors import CephError, CephUnavailable

# Option names librados treats as secrets; their values are never stored in messages,
# repr or logs. Ceph accepts spaces, dashes and underscores interchangeably in names.
SECRET_OPTIONS = frozenset({"key"})
REDACTED = "<redacted>"


def _norm(option: str) -> str:
    return option.strip().replace(" ", "_").replace("-", "_").lower()


def is_secret(option: str) -> bool:
    return _norm(option) in SECRET_OPTIONS


def redact(conf: Mapping[str, str]) -> dict[str, str]:
    """``conf`` with the values of secret options replaced, safe to log or return over RPC."""
    return {k: (REDACTED if is_secret(k) else v) for k, v in conf.items()}


def libs() -> _ffi.Libs:
    try:
        return _ffi.libs()
    except OSError as e:
        raise CephUnavailable(str(e)) from None


class _Closable(Protocol):
    def close(self) -> None: ...


class Cluster:
    """A librados client handle: ``Cluster(conf, user_id).connect()``.

    ``conf`` is applied with ``rados_conf_set`` after ``config_file`` (if any) was read, so
    it overrides the file; with neither, librados' default search (``$CEPH_CONF``,
    ``/etc/ceph/ceph.conf``...) is read, as SPDK does. ``key_file`` sets ``keyring``.
    The timeouts (seconds) bound the failure modes: ``connect_timeout`` is
    ``client_mount_timeout`` (connect), ``osd_op_timeout`` and ``mon_op_timeout`` turn I/O
    and monitor calls into ``-ETIMEDOUT`` instead of waiting forever when the cluster is
    unreachable; None leaves librados' default (300 s, forever, forever).
    """

    def __init__(
        self,
        conf: Mapping[str, str] | None = None,
        user_id: str | None = None,
        *,
        cluster_name: str = "ceph",
        config_file: str | None = None,
        key_file: str | None = None,
        connect_timeout: float | None = None,
        osd_op_timeout: float | None = None,
        mon_op_timeout: float | None = None,
    ) -> None:
        self.user_id = user_id or "admin"
        self.cluster_name = cluster_name
        self.config_file = config_file
        self.key_file = key_file
        self._conf: dict[str, str] = dict(conf or {})
        for name, value in (
            ("client_mount_timeout", connect_timeout),
            ("rados_osd_op_timeout", osd_op_timeout),
            ("rados_mon_op_timeout", mon_op_timeout),
        ):
            if value is not None:
                self._conf[name] = f"{float(value):g}"
        self._h: Any = None
        self._lock = threading.Lock()
        self._children: set[_Closable] = set()
        self._connected = False

    def __repr__(self) -> str:
        state = "connected" if self._connected else "not connected"
        return (
            f"<Cluster {self.cluster_name} client.{self.user_id} {state} "
            f"conf={redact(self._conf)!r}>"
        )

    @property
    def conf(self) -> dict[str, str]:
        """The options given, with secrets redacted."""
        return redact(self._conf)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def handle(self) -> Any:
        """The ``rados_t`` (for ``Ioctx``); raises when not connected."""
        if not self._connected:
            raise CephError(-107, "rados", "not connected")  # ENOTCONN
        return self._h

    def connect(self) -> None:
        """Create the handle, apply the configuration and connect. Blocks.

        On failure nothing is left behind and the Cluster can be connected again.
        """
        L = libs()
        ffi, rados = L.ffi, L.rados
        with self._lock:
            if self._connected:
                return
            ph = ffi.new("rados_t *")
            rc = rados.rados_create2(
                ph, self.cluster_name.encode(), f"client.{self.user_id}".encode(), 0
            )
            if rc < 0:
                raise CephError(rc, "rados_create2", f"client.{self.user_id}")
            h = ph[0]
            try:
                self._configure(h)
                rc = rados.rados_connect(h)
                if rc < 0:
                    raise CephError(rc, "rados_connect", self._where())
            except BaseException:
                rados.rados_shutdown(h)
                raise
            self._h = h
            self._connected = True

    def _where(self) -> str:
        mon = next((v for k, v in self._conf.items() if _norm(k) == "mon_host"), None)
        return f"client.{self.user_id}" + (f" mon_host={mon}" if mon else "")

    def _configure(self, h: Any) -> None:
        rados = libs().rados
        if self.config_file is not None:
            rc = rados.rados_conf_read_file(h, self.config_file.encode())
            if rc < 0:
                raise CephError(rc, "rados_conf_read_file", self.config_file)
        elif not self._conf:
            # librados' own search path; a missing default file is not an error there.
            rados.rados_conf_read_file(h, libs().ffi.NULL)
        if self.key_file is not None:
            rc = rados.rados_conf_set(h, b"keyring", self.key_file.encode())
            if rc < 0:
                raise CephError(rc, "rados_conf_set", "keyring")
        for name, value in self._conf.items():
            rc = rados.rados_conf_set(h, name.encode(), str(value).encode())
            if rc < 0:
                # The option's name only: its value may be a secret.
                raise CephError(rc, "rados_conf_set", name)

    def conf_get(self, option: str) -> str:
        """The effective value of a (non-secret) option of a connected handle."""
        if is_secret(option):
            raise CephError(-1, "rados_conf_get", f"{option} is secret")  # EPERM
        L = libs()
        buf = L.ffi.new("char[]", 4096)
        rc = L.rados.rados_conf_get(self.handle, option.encode(), buf, 4096)
        if rc < 0:
            raise CephError(rc, "rados_conf_get", option)
        return str(L.ffi.string(buf).decode())

    def fsid(self) -> str:
        L = libs()
        buf = L.ffi.new("char[]", 64)
        rc = L.rados.rados_cluster_fsid(self.handle, buf, 64)
        if rc < 0:
            raise CephError(rc, "rados_cluster_fsid")
        return str(L.ffi.string(buf).decode())

    def instance_id(self) -> int:
        return int(libs().rados.rados_get_instance_id(self.handle))

    def open_ioctx(self, pool: str) -> Ioctx:
        """An I/O context on ``pool``. Unknown pool: ``CephError`` with rc ``-ENOENT``."""
        L = libs()
        pio = L.ffi.new("rados_ioctx_t *")
        with self._lock:
            rc = L.rados.rados_ioctx_create(self.handle, pool.encode(), pio)
            if rc < 0:
                raise CephError(rc, "rados_ioctx_create", f"pool={pool}")
            io = Ioctx(self, pool, pio[0])
            self._children.add(io)
        return io

    def _forget(self, child: _Closable) -> None:
        with self._lock:
            self._children.discard(child)

    def shutdown(self) -> None:
        """Close what is still open on this connection (images, ioctxs), then disconnect.

        Blocks until in-flight I/O of open images completed. Idempotent.
        """
        with self._lock:
            children = list(self._children)
        for child in children:
            child.close()
        with self._lock:
            if self._h is not None:
                libs().rados.rados_shutdown(self._h)
            self._h = None
            self._connected = False

    close = shutdown

    def __enter__(self) -> Cluster:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class Ioctx:
    """A ``rados_ioctx_t`` on one pool; made by ``Cluster.open_ioctx``."""

    def __init__(self, cluster: Cluster, pool: str, handle: Any) -> None:
        self.cluster = cluster
        self.pool = pool
        self._h: Any = handle
        self._lock = threading.Lock()
        self._children: set[_Closable] = set()

    def __repr__(self) -> str:
        return f"<Ioctx pool={self.pool} {'open' if self._h is not None else 'closed'}>"

    @property
    def handle(self) -> Any:
        if self._h is None:
            raise CephError(-9, "rados_ioctx", f"pool={self.pool} is closed")  # EBADF
        return self._h

    def _adopt(self, child: _Closable) -> None:
        with self._lock:
            self._children.add(child)

    def _forget(self, child: _Closable) -> None:
        with self._lock:
            self._children.discard(child)

    def close(self) -> None:
        """Close the images opened through this context, then destroy it. Idempotent."""
        with self._lock:
            children = list(self._children)
        for child in children:
            child.close()
        with self._lock:
            h, self._h = self._h, None
        if h is not None:
            libs().rados.rados_ioctx_destroy(h)
            self.cluster._forget(self)

    def __enter__(self) -> Ioctx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
