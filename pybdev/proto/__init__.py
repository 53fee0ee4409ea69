"""Wire protocols, sans-IO: bytes in, events and bytes out; no sockets, no asyncio, no bdevs.

Each protocol lives in a package of its own, split by role so that a target and an
initiator import only what they speak: :mod:`pybdev.proto.nbd` (the NBD handshake for
server and client, and the transmission phase) serves the NBD network and kernel exports
and the NBD client bdev alike; the NVMe/TCP protocol will live beside it as
``pybdev.proto.nvme``, for the NVMe/TCP target and initiator to come.  Nothing here
imports from the rest of pybdev (exports, bdevs, RPC): the dependency points one way,
from the users of a protocol to the protocol, and the state machines can be tested,
fuzzed and benchmarked byte for byte without an event loop.
"""
