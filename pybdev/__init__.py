"""pybdev: a storage target in Python that speaks SPDK's JSON-RPC.

This package's ``__init__`` imports nothing heavy on purpose: ``scripts/rpc.py`` imports
``pybdev.cli`` with only the standard library available.
"""

__version__ = "0.1.0"
