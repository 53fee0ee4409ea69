"""Example calls and errors of the RPC methods, for the generated reference.

One scenario, in order, so each call finds the state the ones before it made (a base bdev
before its passthru). ``tests/rpc/test_examples.py`` runs it against a live target and
fails when an answer differs from the one declared here, so the examples in
``docs/rpc-reference.md`` cannot rot. An answer is compared as a subset: the keys an object
declares must be there with these values (others may be too), a list must have the declared
elements in order; ``ANY`` and ``ANY_UUID`` match any string and any UUID. ``TMP`` in
params stands for a directory the test makes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TMP = "/tmp/pybdev-example"
#: Answers that vary from run to run: any string, any UUID.
ANY = "<any>"
ANY_UUID = "<uuid>"
CAPTURE = (0, "")  # while writing a step: run tests/rpc/test_examples.py to see the error
UUID = "7b5f1a4e-93d4-4d3a-9a4b-2f6c1e0d8a11"


@dataclass(frozen=True)
class Step:
    """One call: with ``error`` set, the call must fail with that ``(code, message)``."""

    method: str
    params: dict[str, Any] | None = None
    answer: Any = None
    error: tuple[int, str] | None = None
    #: Shown in the reference (the first non-error step of a method is its example).
    documented: bool = True
    tags: tuple[str, ...] = field(default=())


SCENARIO: list[Step] = [
    Step("framework_wait_init", None, True),
    Step("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 32768, "block_size": 512,
                                "uuid": UUID}, "Malloc0"),
    Step("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 32768, "block_size": 512},
         error=(-17, "File exists: bdev name or alias Malloc0 already exists")),
    Step("bdev_malloc_create", {"num_blocks": 0, "block_size": 512},
         error=(-22, "Invalid argument: num_blocks must be greater than 0")),
    Step("bdev_null_create", {"name": "Null0", "num_blocks": 1024, "block_size": 512},
         "Null0"),
    Step("bdev_null_resize", {"name": "Null0", "new_size": 1}, True),
    Step("bdev_passthru_create", {"name": "PT0", "base_bdev_name": "Malloc0"}, "PT0"),
    Step("bdev_wait_for_examine", None, True),
    Step("bdev_get_bdevs", {"name": "PT0"},
         [{"name": "PT0", "product_name": "passthru", "block_size": 512, "num_blocks": 32768,
           "assigned_rate_limits": {"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0,
                                    "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0},
           "claimed": False}]),
    Step("bdev_get_bdevs", {"name": "nope"}, error=(-19, "No such device")),
    Step("bdev_set_qos_limit", {"name": "PT0", "rw_ios_per_sec": 20000,
                                "r_mbytes_per_sec": 100}, True),
    Step("bdev_set_qos_limit", {"name": "PT0"}, error=(-22, "No rate limits specified")),
    Step("bdev_set_qos_limit", {"name": "nope", "rw_ios_per_sec": 1000},
         error=(-19, "No such device")),
    Step("bdev_enable_histogram", {"name": "PT0", "enable": True, "opc": "read"}, True),
    Step("bdev_enable_histogram", {"name": "PT0", "enable": True, "opc": "bogus"},
         error=(-32603, "Invalid Io type")),
    Step("bdev_get_histogram", {"name": "PT0"},
         {"granularity": 7, "min_range": 3, "max_range": 30, "tsc_rate": 1000000000}),
    Step("bdev_get_histogram_borders", {"name": "PT0", "borders": [100, 1000]},
         {"borders_count": [0, 0, 0]}),
    Step("bdev_get_histogram", {"name": "Malloc0"}, error=(-32603, "Bad address")),
    Step("bdev_set_qd_sampling_period", {"name": "PT0", "period": 1000}, True),
    Step("bdev_get_iostat", {"names": ["PT0"]},
         {"tick_rate": 1000000000, "bdevs": [{"name": "PT0", "bytes_written": 0,
                                              "queue_depth_polling_period": 1000}]}),
    Step("nbd_start_disk", {"bdev_name": "PT0",
                            "nbd_device": f"nbd+unix:///PT0?socket={TMP}/nbd.sock"},
         f"nbd+unix:///PT0?socket={TMP}/nbd.sock"),
    Step("nbd_get_disks", None,
         [{"nbd_device": f"nbd+unix:///PT0?socket={TMP}/nbd.sock", "bdev_name": "PT0"}]),
    Step("nbd_start_disk", {"bdev_name": "nope",
                            "nbd_device": f"nbd+unix:///x?socket={TMP}/nbd.sock"},
         error=(-19, "No such device: bdev nope not found")),
    Step("nbd_stop_disk", {"nbd_device": f"nbd+unix:///PT0?socket={TMP}/nbd.sock"}, True),
    Step("bdev_delay_create", {"name": "Delay0", "base_bdev_name": "Null0",
                               "avg_read_latency": 100, "p99_read_latency": 1000,
                               "avg_write_latency": 100, "p99_write_latency": 1000},
         "Delay0"),
    Step("bdev_delay_update_latency", {"delay_bdev_name": "Delay0",
                                       "latency_type": "avg_read", "latency_us": 200}, True),
    Step("bdev_delay_delete", {"name": "Delay0"}, True),
    Step("bdev_split_create", {"base_bdev": "Null0", "split_count": 2},
         ["Null0p0", "Null0p1"]),
    Step("bdev_split_delete", {"base_bdev": "Null0"}, True),
    Step("bdev_error_create", {"base_name": "Null0"}, True),
    Step("bdev_error_inject_error", {"name": "EE_Null0", "io_type": "read",
                                     "error_type": "failure", "num": 1}, True),
    Step("bdev_error_delete", {"name": "EE_Null0"}, True),
    Step("bdev_passthru_delete", {"name": "PT0"}, True),
    Step("bdev_lvol_create_lvstore", {"bdev_name": "Malloc0", "lvs_name": "lvs0"}, ANY_UUID),
    Step("bdev_lvol_create", {"lvol_name": "lv0", "size_in_mib": 4, "lvs_name": "lvs0",
                              "thin_provision": True}, ANY_UUID),
    Step("bdev_lvol_create", {"lvol_name": "lv1", "size_in_mib": 4, "lvs_name": "nope"},
         error=(-19, "No such device")),
    Step("bdev_lvol_get_lvstores", {"lvs_name": "lvs0"},
         [{"name": "lvs0", "base_bdev": "Malloc0", "cluster_size": 4194304}]),
    Step("bdev_lvol_snapshot", {"lvol_name": "lvs0/lv0", "snapshot_name": "snap0"}, ANY_UUID),
    Step("bdev_lvol_clone", {"snapshot_name": "lvs0/snap0", "clone_name": "clone0"},
         ANY_UUID),
    Step("bdev_lvol_resize", {"name": "lvs0/lv0", "size_in_mib": 8}, True),
    Step("bdev_lvol_delete", {"name": "lvs0/clone0"}, True),
    Step("bdev_lvol_delete_lvstore", {"lvs_name": "lvs0"}, True),
    Step("nvmf_create_transport", {"trtype": "TCP"}, True),
    Step("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:cnode1",
                                   "allow_any_host": True}, True),
    Step("nvmf_subsystem_add_ns", {"nqn": "nqn.2016-06.io.spdk:cnode1",
                                   "namespace": {"bdev_name": "Null0"}}, 1),
    Step("nvmf_subsystem_add_ns", {"nqn": "nqn.2016-06.io.spdk:cnode9",
                                   "namespace": {"bdev_name": "Null0"}},
         error=(-32602, "Subsystem with NQN 'nqn.2016-06.io.spdk:cnode9' not found")),
    Step("nvmf_subsystem_remove_ns", {"nqn": "nqn.2016-06.io.spdk:cnode1", "nsid": 1}, True),
    Step("nvmf_delete_subsystem", {"nqn": "nqn.2016-06.io.spdk:cnode1"}, True),
    Step("spdk_get_version", None, {"version": ANY}),
    Step("framework_get_config", {"name": "nbd"}, []),
    Step("bdev_malloc_delete", {"name": "Malloc0"}, True),
    Step("bdev_malloc_delete", {"name": "Malloc0"},
         error=(-19, "No such device: no malloc bdev named Malloc0")),
    Step("bdev_null_delete", {"name": "Null0"}, True),
]


def examples() -> dict[str, Step]:
    """The documented example of each method: its first successful step."""
    out: dict[str, Step] = {}
    for step in SCENARIO:
        if step.error is None and step.documented:
            out.setdefault(step.method, step)
    return out


def errors() -> dict[str, list[tuple[int, str]]]:
    """The errors each method is shown (and checked) to answer, in scenario order."""
    out: dict[str, list[tuple[int, str]]] = {}
    for step in SCENARIO:
        if step.error is not None and step.error not in out.setdefault(step.method, []):
            out[step.method].append(step.error)
    return out
