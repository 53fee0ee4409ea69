"""The error every Python API of pybdev raises: an errno and what went wrong.

The bdev layer, its modules and the exports raise :class:`OperationError` so they stay usable
without RPC; the JSON-RPC dispatcher answers it as ``-errno`` with ``message``.
"""

from __future__ import annotations

import os


class OperationError(Exception):
    """A failed operation: ``errno`` (positive) and a message for people.

    ``message`` defaults to strerror's text followed by ``": detail"``, as SPDK's
    ``spdk_strerror`` answers; an error that SPDK answers with a text of its own (``nbd
    device not found``) passes it as ``message``.
    """

    def __init__(self, err: int, detail: str = "", *, message: str | None = None) -> None:
        self.errno = abs(err)
        self.detail = detail
        text = os.strerror(self.errno)
        self.message = message if message is not None else (
            f"{text}: {detail}" if detail else text)
        super().__init__(self.message)
