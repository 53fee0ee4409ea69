"""NVMe over TCP, sans-IO: bytes in, PDU events and bytes out; no sockets, no asyncio.

Shared by the NVMe-oF target (``pybdev/nvmf``) and the NVMe/TCP initiator.  References:
the NVMe/TCP transport binding as implemented by SPDK (``lib/nvmf/tcp.c``,
``include/spdk/nvme_spec.h``, ``nvmf_spec.h``) and Linux (``drivers/nvme/target/tcp.c``,
``include/linux/nvme-tcp.h``, ``include/linux/nvme.h``); the subset and the host's
expectations are summarised in ``docs/nvmf.md``.  Import everything from here
(``from pybdev.proto import nvme``); the modules split it by role:

``const``
    PDU types and flags, FES codes, opcodes, CNS/LID/FID values, property offsets,
    status codes (``Sc``, ``status(sct, sc, dnr)``), discovery constants.
``crc32c``
    ``crc32c(data, crc=0)``: header and data digests (C extension, pure-Python fallback).
``pdu``
    ``PduParser(role, max_capsule_data=, max_data=, pda=)`` with ``feed(bytes) ->
    [PDU events]``; events ``ICReq``, ``ICResp``, ``CapsuleCmd``, ``CapsuleResp``,
    ``H2CData``, ``C2HData``, ``R2T``, ``TermReq``; ``encode_ic_req``,
    ``encode_ic_resp`` and ``Framer(hdgst, ddgst, pda)`` for everything after the IC
    exchange (``capsule_cmd``, ``capsule_resp``, ``h2c_data``, ``c2h_data``, ``r2t``,
    ``term_req``).
``command``
    ``Sqe``/``Cqe`` (``decode_sqe``, ``encode_sqe``, ``decode_cqe``, ``encode_cqe``),
    field accessors (``connect_fields``, ``property_fields``, ``rw_fields``,
    ``log_page_fields``), ``ConnectData`` and encoders of every command pybdev's
    initiator and tests send (Connect, Property Get/Set, Identify, Get Log Page,
    Set/Get Features, AER, Keep Alive, Read, Write, Flush, Write Zeroes, DSM).
``data``
    ``IdentifyController``, ``IdentifyNamespace``, namespace lists and descriptors,
    ``DiscoveryEntry`` and the discovery log page, changed-namespace list, SMART log.
``host``
    ``HostQueue``: the host side of one queue pair (ICReq, ICResp check, CIDs,
    in-capsule or R2T-driven write data, C2HData reassembly, completions).
``errors``
    ``PduError`` (fatal for the connection; carries FES/FEI for the TermReq) and
    ``DecodeError`` (a malformed data structure).

Controller side, per connection::

    parser = nvme.PduParser(nvme.CONTROLLER, max_capsule_data=8192, max_data=131072)
    try:
        for pdu in parser.feed(data):
            if isinstance(pdu, nvme.ICReq):
                framer = nvme.Framer(pdu.hdgst, pdu.ddgst, pdu.hpda)
                write(nvme.encode_ic_resp(131072, hdgst=pdu.hdgst, ddgst=pdu.ddgst))
            elif isinstance(pdu, nvme.CapsuleCmd):
                ...  # pdu.cmd is an Sqe; answer with framer.capsule_resp(encode_cqe(...))
    except nvme.PduError as err:
        write(nvme.Framer.term_req(nvme.PDU_C2H_TERM_REQ, err.fes, err.fei, err.header))
        close()
"""

from __future__ import annotations

from . import command, const, data, errors, host, pdu
from .command import *  # noqa: F403
from .const import *  # noqa: F403
from .crc32c import crc32c
from .data import *  # noqa: F403
from .errors import *  # noqa: F403
from .host import *  # noqa: F403
from .pdu import *  # noqa: F403

__all__ = [
    "crc32c",
    *const.__all__,
    *command.__all__,
    *data.__all__,
    *errors.__all__,
    *pdu.__all__,
    *host.__all__,
]
