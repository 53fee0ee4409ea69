"""NQN validity as SPDK checks it (``nvmf_nqn_is_valid`` in ``lib/nvmf/subsystem.c``)."""

from __future__ import annotations

import re
import uuid

from pybdev.proto.nvme import DISCOVERY_NQN

_UUID_PREFIX = "nqn.2014-08.org.nvmexpress:uuid:"
_DATE = re.compile(r"nqn\.\d{4}-\d{2}\.")
_LABEL = re.compile(r"[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def nqn_is_valid(nqn: str) -> bool:
    raw = nqn.encode("utf-8", "surrogatepass")
    if not 11 <= len(raw) <= 223:
        return False
    if nqn == DISCOVERY_NQN:
        return True
    if nqn.startswith(_UUID_PREFIX):
        rest = nqn[len(_UUID_PREFIX):]
        if len(rest) != 36:
            return False
        try:
            uuid.UUID(rest)
        except ValueError:
            return False
        return True
    if not _DATE.match(nqn):
        return False
    domain, sep, user = nqn[12:].partition(":")
    if not sep or not user or not domain:
        return False
    try:
        user.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return all(_LABEL.match(label) for label in domain.split("."))
