"""The Unix-socket ceiling for a Python NBD server: the least a server can do per request.

A blocking server, one thread per connection, with no event loop, no bdev layer and no
validation: it parses requests with ``pybdev.proto.nbd`` (handshake included, so libnbd
and fio's nbd engine connect as to any server), answers READs with ``sendmsg([header,
view of a bytearray])`` and receives WRITE payloads straight into that bytearray. What
pybdev's export costs on top of moving the same bytes through the same socket is the
difference to this server, measured in the same run by ``bench/nbd_fio.py`` (server name
``ceiling``).

    python bench/nbd_ceiling.py SOCKET SIZE
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pybdev.proto import nbd as proto  # noqa: E402

HEADER = proto.REQUEST  # 28 bytes


def serve(conn: socket.socket, disk: bytearray) -> None:
    info = proto.ExportInfo(name="", size=len(disk),
                            flags=proto.NBD_FLAG_SEND_FLUSH | proto.NBD_FLAG_SEND_FUA)
    hs = proto.ServerHandshake(lambda name: info)
    conn.sendall(hs.data_to_send())
    event = None
    while event is None:
        data = conn.recv(65536)
        if not data:
            return
        event = hs.receive_data(data)
        out = hs.data_to_send()
        if out:
            conn.sendall(out)
    if not isinstance(event, proto.TransmissionReady):
        return
    structured = event.structured_replies
    view = memoryview(disk)
    hdr = bytearray(28)
    hview = memoryview(hdr)
    pack_data = proto.OFFSET_DATA.pack
    pack_simple = proto.SIMPLE_REPLY.pack
    unpack = HEADER.unpack_from
    recv_into = conn.recv_into
    sendmsg = conn.sendmsg
    pending = bytearray(event.trailing)
    while True:
        got = len(pending)
        if got:
            hdr[:got] = pending
            pending = bytearray()
        while got < 28:
            n = recv_into(hview[got:])
            if not n:
                return
            got += n
        _magic, _flags, typ, cookie, offset, length = unpack(hdr)
        if typ == proto.NBD_CMD_READ:
            data = view[offset:offset + length]
            head = (pack_data(0x668E33EF, 1, 1, cookie, length + 8, offset) if structured
                    else pack_simple(0x67446698, 0, cookie))
            bufs = [head, data]
            while bufs:
                n = sendmsg(bufs)
                while bufs and n >= len(bufs[0]):
                    n -= len(bufs[0])
                    bufs.pop(0)
                if bufs and n:
                    bufs[0] = memoryview(bufs[0])[n:]
        elif typ == proto.NBD_CMD_WRITE:
            dest = view[offset:offset + length]
            done = 0
            while done < length:
                n = recv_into(dest[done:])
                if not n:
                    return
                done += n
            conn.sendall(pack_simple(0x67446698, 0, cookie))
        elif typ == proto.NBD_CMD_DISC:
            return
        else:
            conn.sendall(pack_simple(0x67446698, 0, cookie))


def main() -> int:
    path, size = sys.argv[1], int(sys.argv[2])
    disk = bytearray(size)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        if os.path.exists(path):
            os.unlink(path)
        srv.bind(path)
        srv.listen(16)
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn, disk), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
