"""The two errors of :mod:`pybdev.proto.nvme`."""

from __future__ import annotations

__all__ = ["DecodeError", "PduError"]


class PduError(Exception):
    """The peer sent a PDU that breaks NVMe/TCP; the connection must end.

    ``fes`` (a :class:`~pybdev.proto.nvme.const.Fes`) and ``fei`` (the byte offset of the
    bad field in the PDU header, or the bad value for some codes) go into the
    termination request; ``header`` is the start of the offending PDU (at most 128
    bytes) that the termination request carries.  ``parsed`` holds the PDUs decoded
    from the same input before the fault.
    """

    def __init__(self, message: str, fes: int, fei: int = 0, header: bytes = b"",
                 parsed: list | None = None) -> None:
        super().__init__(message)
        self.fes = fes
        self.fei = fei
        self.header = header[:128]
        self.parsed: list = parsed if parsed is not None else []


class DecodeError(ValueError):
    """A command's data structure is malformed; ``offset`` is where, in bytes."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset
