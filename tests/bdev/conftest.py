"""Fixtures for the bdev layer and module tests.

In-process: ``layer`` is a :class:`BdevLayer` with every bdev module file loaded, as the
target has it, shut down at teardown. ``status`` and ``complete`` run a callback-API
request and give its completion.

Subprocess: ``shared_target`` is one real target per test module (cheaper than a start
per test) for tests that clean up after themselves; tests that need a fresh target use
``start_target`` from tests/conftest.py. Socket paths live in a short directory, because
a Unix socket path must fit in 108 bytes and pytest's tmp_path may not.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pybdev.bdev.core import BdevLayer, BdevModule, Descriptor
from pybdev.bdev.modules import BUILTIN_MODULES
from pybdev.rpc.client import JsonRpcException
from tests.conftest import Target

M = TypeVar("M", bound=BdevModule)


@pytest.fixture
async def layer() -> AsyncIterator[BdevLayer]:
    bdev_layer = BdevLayer()
    for cls in BUILTIN_MODULES:
        bdev_layer.add_module(cls(bdev_layer))
    yield bdev_layer
    await bdev_layer.shutdown()


def module(layer: BdevLayer, cls: type[M]) -> M:
    found: M = layer.module(cls)
    return found


def complete(submit: Callable[[Callable[[int, Any], None]], None]) -> tuple[int, Any]:
    """Submit a request that completes synchronously (in-memory modules); its result."""
    out: list[tuple[int, Any]] = []
    submit(lambda status, data: out.append((status, None if data is None else bytes(data))))
    assert len(out) == 1, "the request did not complete exactly once, synchronously"
    return out[0]


def status(submit: Callable[[Callable[[int, Any], None]], None]) -> int:
    return complete(submit)[0]


async def read(desc: Descriptor, offset: int, length: int) -> bytes:
    return await desc.read_async(offset, length)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pbd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_target() -> Iterator[Target]:
    path = Path(tempfile.mkdtemp(prefix="pbd-", dir="/tmp"))
    t = Target(path / "spdk.sock", [], path / "target.log")
    try:
        yield t.wait_ready()
    finally:
        code = t.stop()
        log = t.log()
        shutil.rmtree(path, ignore_errors=True)
    assert code == 0, log


def rpc_error(t: Target, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The error object of a call that must fail (``params`` sent as given, no None filter)."""
    with t.client() as c:
        c.send_raw(c.request(method, params))
        response = c.recv_value()
    assert "error" in response, f"{method} {params} succeeded: {response}"
    error: dict[str, Any] = response["error"]
    return error


def names(t: Target) -> list[str]:
    return [b["name"] for b in t.rpc("bdev_get_bdevs")]


__all__ = ["JsonRpcException", "complete", "module", "names", "read", "rpc_error", "status"]
