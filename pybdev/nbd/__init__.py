"""NBD: the sans-IO wire protocol (``proto``), the kernel export and the network export."""
