"""What every export of a bdev shares, whatever the protocol (NBD, kernel NBD, ublk, NVMe/TCP).

``base``: the life of an export (open with hot-remove routing, stop: accept no more →
drain → release → close).  ``status``: bdev completion status → each protocol's error
value.  This package depends on the bdev API only, never on a protocol package.
"""
