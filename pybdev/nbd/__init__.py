"""NBD exports: the network export (``server``) and the kernel export (``kernel``).

The wire protocol they speak, and the NBD URI syntax, live in :mod:`pybdev.proto.nbd`.
"""
