"""cffi ABI-mode access to the io_uring syscalls (no compiler, no liburing).

Only three things go through C: ``syscall()`` from the C library (so the GIL is released
while ``io_uring_enter`` blocks), a few struct layouts for the setup/register arguments,
and pointers to Python buffers. The rings themselves are read and written from Python
through memoryviews over ``mmap`` objects (see ``ring.py``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

# ``syscall`` is variadic in C, but cffi would then demand an explicitly typed cdata per
# argument (slow). Declaring it with seven fixed ``long`` parameters is safe on the Linux
# ABIs we run on: on x86-64 SysV a variadic callee only reads %al to decide whether to
# spill vector registers, and glibc's syscall() is assembly that moves the integer
# registers straight into the kernel's argument registers; unused trailing arguments are
# ignored by the kernel.
CDEF = """
long syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6);

struct iovec {
    void *iov_base;
    size_t iov_len;
};

struct io_sqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1;
    uint64_t user_addr;
};

struct io_cqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1;
    uint64_t user_addr;
};

struct io_uring_params {
    uint32_t sq_entries;
    uint32_t cq_entries;
    uint32_t flags;
    uint32_t sq_thread_cpu;
    uint32_t sq_thread_idle;
    uint32_t features;
    uint32_t wq_fd;
    uint32_t resv[3];
    struct io_sqring_offsets sq_off;
    struct io_cqring_offsets cq_off;
};

/* Declared flat (no unions) only so tests can compare offsets with abi.SQE_STRUCT. */
struct io_uring_sqe {
    uint8_t opcode;
    uint8_t flags;
    uint16_t ioprio;
    int32_t fd;
    uint64_t off;
    uint64_t addr;
    uint32_t len;
    uint32_t op_flags;
    uint64_t user_data;
    uint16_t buf_index;
    uint16_t personality;
    int32_t file_index;
    uint64_t addr3;
    uint64_t pad2;
};

struct io_uring_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
};

struct io_uring_files_update {
    uint32_t offset;
    uint32_t resv;
    uint64_t fds;
};

struct io_uring_probe_op {
    uint8_t op;
    uint8_t resv;
    uint16_t flags;
    uint32_t resv2;
};

struct io_uring_probe {
    uint8_t last_op;
    uint8_t ops_len;
    uint16_t resv;
    uint32_t resv2[3];
    struct io_uring_probe_op ops[];
};

struct __kernel_timespec {
    int64_t tv_sec;
    long long tv_nsec;
};

struct io_uring_getevents_arg {
    uint64_t sigmask;
    uint32_t sigmask_sz;
    uint32_t min_wait_usec;
    uint64_t ts;
};
"""


@dataclass(frozen=True, slots=True)
class Native:
    """The loaded cffi objects: ``ffi`` (types, buffers) and ``lib`` (``syscall``)."""

    ffi: Any
    lib: Any


@functools.cache
def load() -> Native:
    """Load cffi and the C library once; raises ImportError/OSError when impossible."""
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    # dlopen(None) is the C library the interpreter already has loaded: no file lookup.
    lib: Any = ffi.dlopen(None)  # cffi Lib: symbols appear at run time
    # Resolve the symbol now so a missing syscall() shows up as the availability reason
    # instead of an AttributeError on the first ring operation.
    _ = lib.syscall
    return Native(ffi=ffi, lib=lib)
