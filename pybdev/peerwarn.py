"""Warnings about what a network peer did, rate-limited per peer (docs/operations.md).

Failed authentication, an unknown NBD export name, a refused connection, a limit hit: each
is a WARNING at the default level, naming the peer. A hostile client can cause them as fast
as it can connect, so per peer (its address without the port: a new port is free) at most
:data:`BURST` warnings are written per :data:`INTERVAL` seconds; the rest are counted and,
at the end of the interval, summed up in one line ("suppressed N warnings from PEER").
At most :data:`MAX_PEERS` peers are tracked; beyond that, new peers share one bucket
(``other peers``), so the table's memory is bounded too.

Every warning is counted by event, suppressed or not: ``/metrics`` reports the counts
(``pybdev_warnings_total``, and ``pybdev_limit_hits_total`` for the events that are limits).
One process serves one target, so the counts and the table are the process's.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

BURST = 5
INTERVAL = 60.0
MAX_PEERS = 1024
OTHERS = "other peers"

#: Events that mean a configured limit was reached (reported as pybdev_limit_hits_total).
LIMITS = frozenset({
    "http_connection_limit", "http_body_too_large", "http_body_timeout",
    "rpc_request_too_large", "nbd_connection_limit", "nbd_handshake_timeout",
    "nbd_buffer_cap", "events_subscriber_stalled",
})

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\\\"]")


def quote(text: str, limit: int = 64) -> str:
    """``text`` in double quotes, cut to ``limit`` characters, control characters, quotes
    and backslashes escaped: safe to put in a log line whatever a client sent."""
    cut = text[:limit]
    escaped = _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", cut)
    return f'"{escaped}"' + ("..." if len(text) > limit else "")


class _Window:
    __slots__ = ("logged", "logger", "start", "suppressed", "timer")

    def __init__(self, start: float, logger: logging.Logger) -> None:
        self.logger = logger  # the summary goes where the warnings went
        self.start = start
        self.logged = 0
        self.suppressed = 0
        self.timer: asyncio.TimerHandle | None = None


class PeerWarnings:
    """The per-peer windows and the per-event counts."""

    def __init__(self, burst: int = BURST, interval: float = INTERVAL,
                 max_peers: int = MAX_PEERS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.interval = interval
        self.max_peers = max_peers
        self.clock = clock
        self.counts: dict[str, int] = {}
        self._peers: dict[str, _Window] = {}

    def warn(self, logger: logging.Logger, event: str, peer: str, msg: str,
             *args: object) -> bool:
        """Count ``event`` and log ``msg % args`` unless ``peer`` used up its burst.

        Returns whether the line was written. ``msg`` should name the peer itself; values
        a client chose must be quoted (``pybdev.rpc.audit.quote``) by the caller.
        """
        self.counts[event] = self.counts.get(event, 0) + 1
        now = self.clock()
        window = self._window(peer, now, logger)
        if window.logged < self.burst:
            window.logged += 1
            logger.warning(msg, *args)
            return True
        window.suppressed += 1
        if window.timer is None:
            window.timer = self._schedule(peer, window)
        return False

    def flush(self) -> None:
        """Write the summaries now for every window that suppressed something."""
        for peer, window in list(self._peers.items()):
            self._summarise(peer, window)
        self._peers.clear()

    def _window(self, peer: str, now: float, logger: logging.Logger) -> _Window:
        window = self._peers.get(peer)
        if window is not None and now - window.start >= self.interval:
            self._summarise(peer, window)
            window = None
        if window is None:
            if len(self._peers) >= self.max_peers:
                self._prune(now)
                if len(self._peers) >= self.max_peers:
                    peer = OTHERS
                    window = self._peers.get(OTHERS)
                    if window is not None:
                        return window
            window = self._peers[peer] = _Window(now, logger)
        return window

    def _prune(self, now: float) -> None:
        for peer, window in list(self._peers.items()):
            if now - window.start >= self.interval:
                self._summarise(peer, window)
                del self._peers[peer]

    def _schedule(self, peer: str, window: _Window) -> asyncio.TimerHandle | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a thread): the next warning or flush() sums up
            return None
        delay = max(0.0, window.start + self.interval - self.clock())

        def expire() -> None:
            window.timer = None
            if self._peers.get(peer) is window:
                del self._peers[peer]
            self._summarise(peer, window)

        return loop.call_later(delay, expire)

    def _summarise(self, peer: str, window: _Window) -> None:
        if window.timer is not None:
            window.timer.cancel()
            window.timer = None
        if window.suppressed:
            window.logger.warning("suppressed %d more warnings about %s in the last %.0f s",
                        window.suppressed, peer, self.interval)
            window.suppressed = 0

    def limit_hits(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if k in LIMITS}


def peer_host(peer: object) -> str:
    """The address part of a ``peername`` (IPv4/IPv6 tuple or Unix path), for the table."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    if isinstance(peer, str | bytes):
        return "unix"
    return "unknown"


#: The process's table (pybdev.rpc, pybdev.nbd and the HTTP listener all warn through it).
WARNINGS = PeerWarnings()

__all__ = ["LIMITS", "WARNINGS", "PeerWarnings", "peer_host", "quote"]
