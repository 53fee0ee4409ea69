"""``GET /metrics``: the target's counters in Prometheus' text format (docs/operations.md).

The I/O path keeps its plain counters (the bdev layer's ``IoStat``, the NBD server's per-export
byte counts, the dispatcher's calls by method and result); nothing on it touches a
prometheus_client object. :class:`TargetCollector` reads those counters when Prometheus
scrapes, so a scrape costs time proportional to the number of bdevs and exports, and I/O
costs nothing extra. Process figures (CPU, memory, open files) come from prometheus_client's
``ProcessCollector``.

prometheus_client is imported only when metrics are served.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from pybdev.bdev.core import IoStat
from pybdev.bdev.subsystem import BdevSubsystem
from pybdev.nbd.subsystem import NbdSubsystem
from pybdev.nvmf.subsystem import NvmfSubsystem
from pybdev.peerwarn import LIMITS, WARNINGS
from pybdev.ublk.subsystem import UblkSubsystem

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from pybdev.app import App

NS_PER_S = 1e9
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def add_metrics_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "metrics", "Prometheus metrics; also at GET /metrics on every --http listener")
    g.add_argument("--metrics-addr", metavar="HOST:PORT",
                   help="serve GET /metrics (and /health) alone on this address, without "
                        "RPC and without authentication; loopback unless "
                        "--metrics-allow-remote")
    g.add_argument("--metrics-allow-remote", action="store_true",
                   help="let --metrics-addr be a non-loopback address (the metrics name "
                        "bdevs and exports)")


class TargetCollector:
    """A prometheus_client collector over one target's live counters."""

    def __init__(self, app: App) -> None:
        self.app = app

    def describe(self) -> list[Any]:
        return []  # collect() is cheap enough to run at registration; no fixed names

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        app = self.app
        yield from self._bdevs(app, CounterMetricFamily, GaugeMetricFamily)
        yield from self._exports(app, CounterMetricFamily, GaugeMetricFamily)

        calls = CounterMetricFamily("pybdev_rpc_calls", "JSON-RPC calls answered, by method "
                                    "and result (ok, or the JSON-RPC error code)",
                                    labels=["method", "result"])
        for (method, code), n in sorted(app.dispatcher.calls.items()):
            calls.add_metric([method or "(unknown)", "ok" if code == 0 else str(code)], n)
        yield calls

        warnings = CounterMetricFamily("pybdev_warnings", "Warnings about network peers, by "
                                       "event (rate-limited in the log, all counted here)",
                                       labels=["event"])
        limits = CounterMetricFamily("pybdev_limit_hits", "Times a configured limit was "
                                     "reached", labels=["limit"])
        counts = dict(WARNINGS.counts)
        for event in sorted(counts):
            warnings.add_metric([event], counts[event])
        for limit in sorted(LIMITS):
            limits.add_metric([limit], counts.get(limit, 0))
        yield warnings
        yield limits

        hub = app.notifier.hub
        yield GaugeMetricFamily("pybdev_event_subscribers", "Clients following GET /events",
                                value=hub.subscribers)
        yield CounterMetricFamily("pybdev_events", "Events published on the event stream",
                                  value=hub.next_id)

    @staticmethod
    def _bdevs(app: App, counter: Any, gauge: Any) -> Iterator[Any]:
        layer = app.subsystem(BdevSubsystem).layer
        ops = counter("pybdev_bdev_operations", "Completed bdev operations",
                      labels=["bdev", "kind"])
        nbytes = counter("pybdev_bdev_bytes", "Bytes of completed bdev operations",
                         labels=["bdev", "kind"])
        latency = counter("pybdev_bdev_latency_seconds", "Summed latency of completed bdev "
                          "operations (divide by pybdev_bdev_operations_total for the mean)",
                          labels=["bdev", "kind"])
        latency_max = gauge("pybdev_bdev_latency_max_seconds", "Longest bdev operation since "
                            "the last reset", labels=["bdev", "kind"])
        errors = counter("pybdev_bdev_errors", "Failed bdev operations, by type (failed; nomem: "
                         "a module was out of memory and the request was retried)",
                         labels=["bdev", "type"])
        size = gauge("pybdev_bdev_size_bytes", "Size of the bdev", labels=["bdev"])
        count = 0
        for bdev in layer:
            count += 1
            name = bdev.name
            stat: IoStat = bdev.stat
            size.add_metric([name], bdev.num_blocks * bdev.block_size)
            for kind in IoStat.KINDS:
                ops.add_metric([name, kind], stat.ops[kind])
                nbytes.add_metric([name, kind], stat.bytes[kind])
                latency.add_metric([name, kind], stat.lat_sum[kind] / NS_PER_S)
                latency_max.add_metric([name, kind], stat.lat_max[kind] / NS_PER_S)
            for err in ("failed", "nomem"):
                errors.add_metric([name, err], stat.errors.get(err, 0))
        yield gauge("pybdev_bdevs", "Registered bdevs", value=count)
        yield from (ops, nbytes, latency, latency_max, errors, size)
        yield from _histograms(layer)

    @staticmethod
    def _exports(app: App, counter: Any, gauge: Any) -> Iterator[Any]:
        labels = ["export", "protocol", "bdev"]
        current = gauge("pybdev_export_clients", "Clients connected to an export now "
                        "(network NBD; a kernel NBD or ublk device counts as 1)", labels=labels)
        total = counter("pybdev_export_connections", "Clients an export has served",
                        labels=labels)
        nbytes = counter("pybdev_export_bytes", "Payload bytes clients asked an export to read "
                         "or write (NBD)", labels=[*labels, "direction"])
        nbd = app.subsystem(NbdSubsystem)
        for key, export in list(nbd.exports.items()):
            lab = [key, "nbd", export.bdev_name]
            nbytes.add_metric([*lab, "read"], export.bytes_read)
            nbytes.add_metric([*lab, "write"], export.bytes_written)
            conns = getattr(export, "connections", None)
            if conns is None:  # a kernel export: the kernel is its one client
                current.add_metric(lab, 0 if export.stopping else 1)
                continue
            current.add_metric(lab, len(conns))
            total.add_metric(lab, export.connections_total)  # type: ignore[attr-defined]
        ublk = app.subsystem(UblkSubsystem).target
        for dev in list(ublk.devices.values()) if ublk is not None else ():
            current.add_metric([dev.path, "ublk", dev.bdev_name], 0 if dev.stopping else 1)
        yield from (current, total, nbytes)

        try:
            nvmf = app.subsystem(NvmfSubsystem)
        except LookupError:
            return
        tcp = nvmf.target.transports.get("TCP")
        if tcp is None:
            return
        qpairs = gauge("pybdev_nvmf_qpairs_connected", "NVMe/TCP queue pairs connected now",
                       labels=["type"])
        conns = list(getattr(tcp, "connections", ()))
        qpairs.add_metric(["admin"], sum(1 for c in conns if c.qid == 0))
        qpairs.add_metric(["io"], sum(1 for c in conns if c.qid > 0))
        yield qpairs
        stats = getattr(tcp, "stats", {})
        qp_total = counter("pybdev_nvmf_qpairs", "NVMe/TCP queue pairs connected so far",
                           labels=["type"])
        qp_total.add_metric(["admin"], stats.get("admin_qpairs", 0))
        qp_total.add_metric(["io"], stats.get("io_qpairs", 0))
        yield qp_total
        yield counter("pybdev_nvmf_completed_io", "NVMe I/O commands completed",
                      value=stats.get("completed_nvme_io", 0))


#: Upper bounds (seconds) of the Prometheus buckets a bdev latency histogram is folded into.
HISTOGRAM_BOUNDS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
                    5e-2, 0.1, 0.25, 0.5, 1.0, 2.5)


def fold_histogram(buckets: Iterable[tuple[int, int, int, int]]
                   ) -> tuple[list[tuple[str, float]], float]:
    """SPDK-style buckets ``(start_ns, end_ns, count, so_far)`` (``Histogram.iterate``) as
    Prometheus' cumulative ``le`` buckets, and an estimated sum (bucket midpoints).

    A bucket counts under the first bound its end does not exceed, so a bound's count never
    includes a request slower than the bound.
    """
    bounds_ns = [b * NS_PER_S for b in HISTOGRAM_BOUNDS]
    cumulative = [0] * len(bounds_ns)
    total = 0
    estimate = 0.0
    for start, end, count, _so_far in buckets:
        if not count:
            continue
        total += count
        estimate += (start + end) / 2 * count
        for i, bound in enumerate(bounds_ns):
            if end <= bound:
                cumulative[i] += count
                break
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(HISTOGRAM_BOUNDS, cumulative, strict=True):
        running += n
        out.append((repr(bound), running))
    out.append(("+Inf", total))
    return out, estimate / NS_PER_S


def _histograms(layer: Any) -> Iterator[Any]:
    """The latency histograms of bdevs that have one on (``bdev_enable_histogram``)."""
    from prometheus_client.core import HistogramMetricFamily

    family = HistogramMetricFamily(
        "pybdev_bdev_latency_histogram_seconds", "Latency of bdev operations while "
        "bdev_enable_histogram is on (sum estimated from bucket midpoints)", labels=["bdev"])
    for bdev in layer:
        histogram = getattr(bdev, "histogram", None)
        if histogram is None or not hasattr(histogram, "iterate"):
            continue
        buckets, estimate = fold_histogram(histogram.iterate())
        family.add_metric([bdev.name], buckets, estimate)
    yield family


def build_registry(app: App) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(TargetCollector(app))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry)


__all__ = ["CONTENT_TYPE", "TargetCollector", "add_metrics_options", "build_registry",
           "fold_histogram", "render"]
