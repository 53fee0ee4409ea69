"""Listening sockets for every server of the target (JSON-RPC socket, HTTP, NBD), bound one way.

The callers hand the sockets to their framework (``loop.create_unix_server(sock=...)``,
aiohttp's ``SockSite``); this module only decides what may be bound, and how.

The rule for a Unix socket path (one rule, for every server):

* nothing there: bind;
* a socket file that nothing answers on (refused connect): left by a process that died,
  removed, then bind;
* a socket file something answers on: :class:`ListenError` ``EADDRINUSE``, untouched;
* a directory: :class:`ListenError` ``EISDIR``; any other file: ``EEXIST``; never removed.

``mode`` 0o600 creates the socket file owner-only (through the umask, so it is never
reachable with wider permissions): the RPC and HTTP sockets need it, as the file mode is
their access check.  :func:`unlink_unix` removes a socket file on close, but only the one
this process bound (a successor may have replaced it).

Everything here is non-blocking: the probe connect on a Unix socket answers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterable
from typing import Any

DEFAULT_BACKLOG = 512


class ListenError(OSError):
    """A socket could not be bound; ``str()`` is a sentence naming the path or address."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)

    def __str__(self) -> str:
        return str(self.strerror)


def clear_stale_unix(path: str) -> None:
    """Apply the rule above to ``path``: return when it is free to bind, else raise."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ListenError(e.errno or errno.EIO, f"{path}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ListenError(errno.EISDIR, f"{path} is a directory")
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(errno.EEXIST, f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        err = probe.connect_ex(path)
    finally:
        probe.close()
    if err == errno.ECONNREFUSED:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # nobody listens: a dead process's socket
        return
    if err == errno.ENOENT:
        return  # removed meanwhile
    if err in (0, errno.EAGAIN, errno.EINPROGRESS):
        # EAGAIN: a listener whose backlog is full is still a listener.
        raise ListenError(errno.EADDRINUSE, f"another server listens on {path}")
    raise ListenError(err, f"{path}: {os.strerror(err)}")


def listen_unix(path: str, *, mode: int | None = None,
                backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """A listening, non-blocking Unix socket at ``path`` (see the module doc)."""
    clear_stale_unix(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if mode is None:
            sock.bind(path)
        else:
            old_umask = os.umask(0o777 & ~mode)
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise ListenError(e.errno or errno.EIO, f"{path}: {e.strerror or e}") from None
    return sock


Identity = tuple[int, int, int]


def unix_identity(path: str) -> Identity | None:
    """What tells the socket file just bound from a successor's, for :func:`unlink_unix`.

    The change time is part of it: a file created after ours was removed may get its
    inode number back.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def unlink_unix(path: str, identity: Identity | None) -> None:
    """Remove the socket file at ``path`` if it is still the one this process bound."""
    if identity is None:
        return
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if (st.st_dev, st.st_ino, st.st_ctime_ns) == identity:
            os.unlink(path)


async def listen_tcp(hosts: Iterable[str | None], port: int, *,
                     backlog: int = DEFAULT_BACKLOG) -> list[socket.socket]:
    """Listening, non-blocking TCP sockets for every address of ``hosts`` on ``port``.

    ``None`` as a host means every interface.  With port 0 the first socket picks a port
    and the others bind the same one.  IPv6 sockets are v6-only, so an IPv4 and an IPv6
    wildcard can both be bound; SO_REUSEADDR lets a restarted target rebind at once.
    """
    loop = asyncio.get_running_loop()
    addrs: list[tuple[int, int, int, tuple[Any, ...]]] = []
    for host in hosts:
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
        except (socket.gaierror, UnicodeError) as e:
            raise ListenError(errno.EINVAL, f"cannot resolve {host}: {e}") from None
        for info in infos:
            entry = (int(info[0]), int(info[1]), info[2], tuple(info[4]))
            if entry not in addrs:
                addrs.append(entry)
    socks: list[socket.socket] = []
    chosen = port
    try:
        for family, typ, proto, sockaddr in addrs:
            where = _describe(family, sockaddr[0], chosen)
            try:
                sock = socket.socket(family, typ, proto)
            except OSError as e:
                raise ListenError(e.errno or errno.EIO, f"{where}: {e.strerror}") from None
            socks.append(sock)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((sockaddr[0], chosen, *sockaddr[2:]))
                chosen = sock.getsockname()[1]
                sock.listen(backlog)
                sock.setblocking(False)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise ListenError(e.errno, f"{where} is in use by "
                                               f"{tcp_port_holder(chosen)}") from None
                raise ListenError(e.errno or errno.EIO, f"{where}: {e.strerror}") from None
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _describe(family: int, host: object, port: int) -> str:
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def process_name(pid: int) -> str:
    """``pid (command line)`` for a message, or just the pid when /proc does not tell."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read(4096).rstrip(b"\0").split(b"\0")
    except OSError:
        return f"pid {pid}"
    command = " ".join(" ".join(a.decode(errors="replace") for a in argv).split())
    if len(command) > 100:
        command = command[:97] + "..."
    return f"pid {pid} ({command})" if command else f"pid {pid}"


def tcp_port_holder(port: int) -> str:
    """Who listens on TCP ``port``: from /proc/net/tcp{,6} and the processes' fds.

    Processes of other users are visible to root only; then the answer says so.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                fields = line.split()
                # local_address is HEX_ADDR:HEX_PORT; state 0A is LISTEN.
                if len(fields) > 9 and fields[3] == "0A" and \
                        int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    if not inodes:
        return "another process"
    wanted = {f"socket:[{i}]" for i in inodes}
    with contextlib.suppress(OSError):
        for pid in sorted((d for d in os.listdir("/proc") if d.isdigit()), key=int):
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                            return process_name(int(pid))
    return "another process (of another user: not visible here)"
