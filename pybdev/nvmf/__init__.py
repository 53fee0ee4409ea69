"""The NVMe-oF target over TCP (SPDK's ``nvmf`` subsystem); see docs/nvmf.md."""
