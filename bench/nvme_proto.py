"""CRC32C and the NVMe/TCP PDU parser (pybdev.proto.nvme): what a digest and a parse cost.

* ``crc32c``: MB/s of the digest over 24 B (a header), 4 KiB and 128 KiB buffers, for
  the implementation in use (the ``crc32c`` package's C extension when installed) and
  the pure-Python fallback (the mask method; ``--table`` adds its slicing-by-8 loop);
* ``parse``: 4 KiB write capsules (in-capsule data) and read capsules per second through
  ``PduParser.feed``, in 64 KiB chunks as a socket delivers them, with and without
  header and data digests.

Best of ``--repeat`` rounds (the machine is shared).

    python bench/nvme_proto.py [--seconds 0.5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from pybdev.proto import nvme
from pybdev.proto.nvme.crc32c import IMPLEMENTATION, crc32c_pure


def rate(fn: Callable[[], int], seconds: float, repeat: int) -> float:
    best = 0.0
    for _ in range(repeat):
        n = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            n += fn()
        best = max(best, n / elapsed)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--table", action="store_true")
    a = ap.parse_args()
    if a.table:
        from pybdev.proto.nvme.crc32c import _table_crc

        buf = os.urandom(4096)
        mbs = rate(lambda: (_table_crc(buf, 0), 4096)[1], a.seconds, a.repeat) / 1e6
        print(f"crc32c table 4096 B: {mbs:8.2f} MB/s ({4096 / mbs:8.1f} us per buffer)")
    impls = [(IMPLEMENTATION, nvme.crc32c)]
    if IMPLEMENTATION != "python":
        impls.append(("python", crc32c_pure))
    for name, fn in impls:
        for size in (24, 4096, 131072):
            buf = os.urandom(size)
            fn(buf)  # builds the masks for this size once
            mbs = rate(lambda b=buf, f=fn: (f(b), len(b))[1], a.seconds, a.repeat) / 1e6
            print(f"crc32c {name:>6} {size:>6} B: {mbs:9.2f} MB/s "
                  f"({size / mbs:8.2f} us per buffer)")
    for digests in (False, True):
        framer = nvme.Framer(digests, digests)
        data = os.urandom(4096)
        stream = b"".join(
            b"".join(bytes(p) for p in framer.capsule_cmd(
                nvme.encode_write(i, 1, i, 8, 512, in_capsule=True), data))
            + b"".join(bytes(p) for p in framer.capsule_cmd(nvme.encode_read(i, 1, i, 8, 512)))
            for i in range(64))
        chunks = [stream[i:i + 65536] for i in range(0, len(stream), 65536)]

        def run(chunks: list[bytes] = chunks, digests: bool = digests) -> int:
            parser = nvme.PduParser(nvme.CONTROLLER)
            parser.feed(nvme.encode_ic_req(hdgst=digests, ddgst=digests))
            n = 0
            for c in chunks:
                n += len(parser.feed(c))
            return n

        pdus = rate(run, a.seconds, a.repeat)
        print(f"parse, digests {'on ' if digests else 'off'}: {pdus:10.0f} PDUs/s "
              f"({1e6 / pdus:6.2f} us per PDU, half of them 4 KiB writes)")


if __name__ == "__main__":
    main()
