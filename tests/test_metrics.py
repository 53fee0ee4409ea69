"""GET /metrics: Prometheus' own parser reads it, and the values move with I/O."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pybdev.metrics import fold_histogram
from pybdev.rpc.client import JsonRpcException, RpcClient
from tests.conftest import ROOT
from tests.rpc.test_http import HttpTarget, basic

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(url: str, **kwargs: object) -> Samples:
    async with aiohttp.ClientSession() as s, s.get(url, **kwargs) as r:  # type: ignore[arg-type]
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(await r.text())


def metrics_url(t: HttpTarget) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"metrics listening on (\S+)", t.log())
        if found:
            return found[1]
        time.sleep(0.05)
    raise AssertionError(t.log())


def qemu_io(uri: str, *commands: str) -> None:
    argv = ["qemu-io", "-f", "raw"]
    for c in commands:
        argv += ["-c", c]
    res = subprocess.run([*argv, uri], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "error" not in res.stdout.lower(), res


@pytest.fixture
def target(tmp_path: Path) -> Iterator[HttpTarget]:
    t = HttpTarget(tmp_path, "--http", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0")
    yield t
    t.stop()


async def test_values_move_with_io(target: HttpTarget) -> None:
    with RpcClient(str(target.sock)) as c:
        c.call("bdev_malloc_create", {"name": "M0", "num_blocks": 2048, "block_size": 512})
        uri = c.call("nbd_start_disk", {"bdev_name": "M0", "nbd_device": "nbd://127.0.0.1:0/m0"})
    before = await scrape(target.url + "/metrics")
    qemu_io(uri, "write -P 7 0 64k", "read -P 7 0 64k", "write -P 9 64k 4k")
    after = await scrape(metrics_url(target))

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    bdev = {"bdev": "M0"}
    assert moved("pybdev_bdev_bytes_total", kind="write", **bdev) == 65536 + 4096
    assert moved("pybdev_bdev_bytes_total", kind="read", **bdev) >= 65536
    assert moved("pybdev_bdev_operations_total", kind="write", **bdev) >= 2
    assert moved("pybdev_bdev_latency_seconds_total", kind="write", **bdev) > 0
    assert value(after, "pybdev_bdev_size_bytes", **bdev) == 2048 * 512
    assert value(after, "pybdev_bdev_errors_total", type="failed", **bdev) == 0
    export = {"export": uri, "protocol": "nbd", "bdev": "M0"}
    assert moved("pybdev_export_connections_total", **export) == 1
    assert value(after, "pybdev_export_clients", **export) == 0  # qemu-io has gone
    assert moved("pybdev_export_bytes_total", direction="write", **export) == 65536 + 4096
    assert moved("pybdev_export_bytes_total", direction="read", **export) >= 65536
    assert value(after, "pybdev_rpc_calls_total", method="nbd_start_disk", result="ok") == 1
    assert value(after, "pybdev_bdevs") >= 1
    assert value(after, "pybdev_limit_hits_total", limit="nbd_connection_limit") == 0
    assert value(after, "process_cpu_seconds_total") > 0
    with RpcClient(str(target.sock)) as c, pytest.raises(JsonRpcException):
        c.call("bdev_malloc_delete", {"name": "nope"})
    errors = await scrape(target.url + "/metrics")
    assert value(errors, "pybdev_rpc_calls_total", method="bdev_malloc_delete",
                 result="-19") == 1


async def test_the_metrics_address_serves_metrics_only(target: HttpTarget) -> None:
    url = metrics_url(target).removesuffix("/metrics")
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/health") as r:
            assert r.status == 200
        async with s.post(url + "/", data=b'{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"}',
                          headers={"Content-Type": "application/json"}) as r:
            assert r.status == 404
        async with s.get(url + "/events") as r:
            assert r.status == 404


def test_metrics_address_must_be_loopback(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "pybdev", "-r", str(tmp_path / "s.sock"),
                          "--metrics-addr", "0.0.0.0:0"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 1
    assert "--metrics-addr 0.0.0.0:0 is not a loopback address" in res.stderr
    assert "--metrics-allow-remote" in res.stderr


async def test_metrics_on_the_http_listener_need_its_credentials(tmp_path: Path) -> None:
    t = HttpTarget(tmp_path, "--http", "127.0.0.1:0", "--http-user", "u",
                   env={"PYBDEV_HTTP_PASSWORD": "p"})
    try:
        async with aiohttp.ClientSession() as s, s.get(t.url + "/metrics") as r:
            assert r.status == 401
        samples = await scrape(t.url + "/metrics", headers=basic("u", "p"))
        assert value(samples, "pybdev_warnings_total", event="http_auth_failed") == 1
    finally:
        t.stop()


def test_an_spdk_histogram_folds_into_prometheus_buckets() -> None:
    # Buckets as pybdev.bdev.histogram's iterate() gives them: (start, end, count, so_far), ns.
    spdk_buckets = [(0, 1_000, 0, 0), (1_000, 8_000, 3, 3), (8_000, 30_000, 2, 5),
                    (30_000, 2_000_000, 1, 6), (2_000_000, 10**10, 4, 10)]
    buckets, estimate = fold_histogram(spdk_buckets)
    le = dict(buckets)
    assert le["1e-05"] == 3  # ends at 8 us
    assert le["2.5e-05"] == 3 and le["5e-05"] == 5  # the 8-30 us bucket is only under 50 us
    assert le["0.0025"] == 6 and le["2.5"] == 6  # the last bucket ends past every bound
    assert le["+Inf"] == 10
    assert list(le.values()) == sorted(le.values())  # cumulative
    assert estimate == pytest.approx((3 * 4_500 + 2 * 19_000 + 1_015_000
                                      + 4 * 5_001_000_000) / 1e9)
    # Prometheus' parser accepts what prometheus_client renders from it.
    from prometheus_client.core import HistogramMetricFamily
    from prometheus_client.exposition import generate_latest

    class One:
        def collect(self) -> Iterator[HistogramMetricFamily]:
            family = HistogramMetricFamily("h_seconds", "h", labels=["bdev"])
            family.add_metric(["M0"], buckets, estimate)
            yield family

    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(One())  # type: ignore[arg-type]
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "h_seconds_bucket", bdev="M0", le="5e-05") == 5
    assert value(samples, "h_seconds_count", bdev="M0") == 10
