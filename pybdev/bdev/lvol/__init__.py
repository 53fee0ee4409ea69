"""Logical volumes: lvstores on a base bdev, lvols with thin provisioning, snapshots, clones.

:mod:`.layout` is the on-disk format (docs/lvol-format.md), :mod:`.store` the lvstore and
its lvols (metadata operations and the I/O path), :mod:`.check` the consistency checker,
:mod:`.module` the bdev module, the lvol bdevs and the ``bdev_lvol_*`` RPCs.
"""
