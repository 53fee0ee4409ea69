"""A target with the TCP transport, a malloc namespace and a loopback listener."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest

from tests.conftest import Target

NQN = "nqn.2016-06.io.spdk:cnode1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Nvmf:
    target: Target
    port: int
    nqn: str = NQN

    def listen_address(self) -> dict[str, str]:
        return {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
                "trsvcid": str(self.port)}


@pytest.fixture
def nvmf(target: Target) -> Nvmf:
    port = free_port()
    target.rpc("nvmf_create_transport", {"trtype": "TCP"})
    target.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 4096,
                                      "block_size": 512})
    target.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True,
                                         "serial_number": "SPDK00000000000001",
                                         "model_number": "pybdev test"})
    assert target.rpc("nvmf_subsystem_add_ns", {"nqn": NQN,
                                                "namespace": {"bdev_name": "Malloc0"}}) == 1
    env = Nvmf(target, port)
    target.rpc("nvmf_subsystem_add_listener", {"nqn": NQN,
                                               "listen_address": env.listen_address()})
    return env
