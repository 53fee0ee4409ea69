"""The ``nvmf`` subsystem: SPDK's NVMe-oF target with the TCP transport (docs/nvmf.md)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

from pybdev.bdev.subsystem import BdevSubsystem
from pybdev.nvmf.rpc import RPC
from pybdev.nvmf.target import NvmSubsystem, Target
from pybdev.nvmf.tcp import DEFAULT_MAX_BUFFERED, MIB
from pybdev.subsystem import Config, Subsystem

if TYPE_CHECKING:
    from pybdev.app import App

log = logging.getLogger("pybdev.nvmf")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


class NvmfSubsystem(Subsystem):
    name = "nvmf"
    depends_on = ("bdev",)
    rpc = RPC

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self.target = Target(app.subsystem(BdevSubsystem).layer)
        self.target.ns_changed = self._ns_changed

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--nvmf-allow-remote", action="store_true",
                            help="let nvmf_subsystem_add_listener listen on non-loopback "
                                 "addresses (NVMe/TCP without TLS or authentication)")
        parser.add_argument("--nvmf-max-buffered-mb", type=_positive_int,
                            default=DEFAULT_MAX_BUFFERED // MIB, metavar="MIB",
                            help="R2T buffers and read data the NVMe/TCP transport holds "
                                 f"across all its connections (default "
                                 f"{DEFAULT_MAX_BUFFERED // MIB})")

    def configure(self, options: argparse.Namespace) -> None:
        self.target.allow_remote = bool(getattr(options, "nvmf_allow_remote", False))
        self.target.max_buffered = MIB * int(getattr(options, "nvmf_max_buffered_mb",
                                                     DEFAULT_MAX_BUFFERED // MIB))

    def _ns_changed(self, sub: NvmSubsystem, nsid: int) -> None:
        for ctrlr in list(sub.controllers.values()):
            ctrlr.ns_changed(nsid)

    async def fini(self) -> None:
        target = self.target
        for sub in list(target.subsystems.values()):
            if not sub.is_discovery:
                try:
                    await target.delete_subsystem(sub.nqn)
                except Exception:
                    log.exception("subsystem %s did not stop cleanly", sub.nqn)
        for ctrlr in list(target.discovery.controllers.values()):
            ctrlr.destroy("target stopping")
        for transport in target.transports.values():
            await transport.close()

    def write_config(self) -> Config | None:
        """SPDK's order (``spdk_nvmf_tgt_write_config_json``, HEAD)."""
        target = self.target
        config: list[Any] = [
            {"method": "nvmf_set_config", "params": dict(target.config)},
            {"method": "nvmf_set_max_subsystems",
             "params": {"max_subsystems": target.max_subsystems}},
            {"method": "nvmf_set_crdt", "params": dict(zip(
                ("crdt1", "crdt2", "crdt3"), target.crdt, strict=True))},
        ]
        config += [{"method": "nvmf_create_transport", "params": t.opts.dump()}
                   for t in target.transports.values()]
        subs = target.sorted_subsystems()
        nvme_subs = [s for s in subs if not s.is_discovery]
        creates = [{"method": "nvmf_create_subsystem", "params": s.create_params()}
                   for s in nvme_subs]
        hosts = [{"method": "nvmf_subsystem_add_host", "params": {"nqn": s.nqn, "host": h}}
                 for s in nvme_subs for h in reversed(s.hosts)]
        namespaces = [{"method": "nvmf_subsystem_add_ns",
                       "params": {"nqn": s.nqn, "namespace": _ns_config(ns)}}
                      for s in nvme_subs for _, ns in sorted(s.namespaces.items())]
        listeners = [{"method": "nvmf_subsystem_add_listener",
                      "params": {"nqn": s.nqn, "listen_address": lst.address.to_json(),
                                 "secure_channel": lst.secure_channel}}
                     for s in subs for lst in s.listeners]
        config += [batch for batch in (creates, hosts, namespaces, listeners) if batch]
        return config


def _ns_config(ns: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"nsid": ns.nsid, "bdev_name": ns.name_given}
    if ns.ptpl_file:
        out["ptpl_file"] = ns.ptpl_file
    if ns.nguid and any(ns.nguid):
        out["nguid"] = ns.nguid.hex().upper()
    if ns.eui64 and any(ns.eui64):
        out["eui64"] = ns.eui64.hex().upper()
    if ns.uuid:
        out["uuid"] = ns.uuid
    out["no_auto_visible"] = ns.no_auto_visible
    return out
