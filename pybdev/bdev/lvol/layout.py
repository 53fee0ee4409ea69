"""The lvstore's on-disk format: geometry, super-block slots and the metadata record.

docs/lvol-format.md describes the format; docs/decisions/lvol-metadata.md says why it is
this one. In short: the first clusters of the base hold the metadata region. Its pages 0
and 1 are two *super slots*; the rest is split into two halves. Generation ``g`` of the
metadata (the whole store: name, UUID, every lvol and its cluster map) is written to half
``g % 2``, flushed, and only then is super slot ``g % 2`` written (and flushed) pointing at
it. A loader takes the valid slot with the highest generation whose record checks out, so
a crash at any point leaves either generation ``g - 1`` or ``g``, never a mix.

The geometry (how many clusters the metadata takes, the data-cluster count, the growth
limit) copies SPDK's blobstore arithmetic (``lib/blob/blobstore.c: spdk_bs_init``) so the
numbers ``bdev_lvol_get_lvstores`` shows are SPDK's.
"""

from __future__ import annotations

import base64
import errno
import json
import struct
import sys
import zlib
from array import array
from dataclasses import dataclass
from typing import Any

from pybdev.errors import OperationError

MAGIC = b"PYBDLVS1"
VERSION = 1
MD_PAGE_SIZE = 4096
DEFAULT_CLUSTER_SIZE = 4 << 20
DEFAULT_MD_RATIO = 100
# magic, version, md_page_size, generation, cluster_size, total_clusters, md_clusters,
# max_clusters, meta_offset (bytes), meta_len (bytes), meta_crc
_SUPER = struct.Struct("<8sIIQQQQQQQI")
_CRC_AT = -4


def _mask_pages(bits: int, page: int) -> int:
    """Pages a blobstore bitmap takes: a 5-byte header, then the bits (``spdk_bs_md_mask``)."""
    return -(-(5 + -(-bits // 8)) // page)


@dataclass(frozen=True)
class Geometry:
    """Where things are on the base, in clusters and pages."""

    cluster_size: int
    block_size: int
    md_page_size: int
    total_clusters: int
    md_clusters: int
    max_clusters: int  # growth limit: bits reserved for the cluster bitmap in SPDK's layout

    @property
    def data_clusters(self) -> int:
        return self.total_clusters - self.md_clusters

    @property
    def md_bytes(self) -> int:
        return self.md_clusters * self.cluster_size

    @property
    def half_offset(self) -> tuple[int, int]:
        """Byte offsets of the two metadata halves."""
        first = 2 * self.md_page_size
        return first, first + self.half_size

    @property
    def half_size(self) -> int:
        pages = (self.md_bytes // self.md_page_size - 2) // 2
        return pages * self.md_page_size

    @property
    def max_growable_size(self) -> int:
        return self.max_clusters * self.cluster_size


def compute_geometry(device_bytes: int, block_size: int, cluster_size: int,
                     md_ratio: int = DEFAULT_MD_RATIO, md_page_size: int = 0) -> Geometry:
    """SPDK's layout arithmetic for a new store; raises OperationError like ``spdk_bs_init``."""
    page = md_page_size or max(MD_PAGE_SIZE, block_size)
    if page % block_size:
        raise OperationError(errno.EINVAL, "md page size not a multiple of the block size")
    if cluster_size % 4096 or cluster_size < page or cluster_size % block_size:
        raise OperationError(errno.EINVAL, "invalid cluster size")
    total = device_bytes // cluster_size
    if total == 0:
        raise OperationError(errno.ENOSPC, "device smaller than one cluster")
    md_len = md_ratio * total // 100
    cluster_bits = max(md_len, total)
    cluster_mask_pages = _mask_pages(cluster_bits, page)
    pages = 1 + _mask_pages(md_len, page) + cluster_mask_pages + _mask_pages(md_len, page) + md_len
    md_clusters = -(-pages * page // cluster_size)
    # Our format needs two super slots and two halves of at least a page each.
    while md_clusters * cluster_size < 4 * page:
        md_clusters += 1
    if md_clusters >= total:
        raise OperationError(errno.ENOMEM, "metadata does not fit on the device")
    max_clusters = (cluster_mask_pages * page - 5) * 8
    return Geometry(cluster_size, block_size, page, total, md_clusters, max(max_clusters, total))


@dataclass
class SuperSlot:
    generation: int
    geometry: Geometry
    meta_offset: int
    meta_len: int
    meta_crc: int


def encode_super(slot: SuperSlot, size: int) -> bytes:
    """A super slot of ``size`` bytes (max(4096, block size)); CRC-32 in its last 4 bytes."""
    g = slot.geometry
    head = _SUPER.pack(MAGIC, VERSION, g.md_page_size, slot.generation, g.cluster_size,
                       g.total_clusters, g.md_clusters, g.max_clusters, slot.meta_offset,
                       slot.meta_len, slot.meta_crc)
    page = bytearray(size)
    page[:len(head)] = head
    page[_CRC_AT:] = struct.pack("<I", zlib.crc32(page[:_CRC_AT]))
    return bytes(page)


def decode_super(page: bytes, block_size: int) -> SuperSlot | None:
    """A valid super slot, or None (not ours, torn or zeroed)."""
    if len(page) < _SUPER.size or page[:8] != MAGIC:
        return None
    (_m, version, md_page, gen, cluster, total, md_clusters, max_clusters, meta_offset, meta_len,
     meta_crc) = _SUPER.unpack_from(page)
    if version != VERSION or md_page < MD_PAGE_SIZE:
        return None
    if struct.unpack("<I", page[_CRC_AT:])[0] != zlib.crc32(page[:_CRC_AT]):
        return None
    geo = Geometry(cluster, block_size, md_page, total, md_clusters, max_clusters)
    return SuperSlot(gen, geo, meta_offset, meta_len, meta_crc)


def encode_clusters(clusters: array[int]) -> str:
    data = clusters if sys.byteorder == "little" else _swapped(clusters)
    return base64.b64encode(zlib.compress(data.tobytes(), 1)).decode("ascii")


def decode_clusters(text: str) -> array[int]:
    out = array("Q")
    out.frombytes(zlib.decompress(base64.b64decode(text)))
    return out if sys.byteorder == "little" else _swapped(out)


def _swapped(a: array[int]) -> array[int]:
    b = array("Q", a)
    b.byteswap()
    return b


def encode_record(record: dict[str, Any]) -> bytes:
    """The metadata record: compact JSON, zlib-compressed (cluster maps are already packed)."""
    return zlib.compress(json.dumps(record, separators=(",", ":")).encode(), 1)


def decode_record(blob: bytes) -> dict[str, Any]:
    try:
        record = json.loads(zlib.decompress(blob))
    except (zlib.error, ValueError) as e:
        raise OperationError(errno.EILSEQ, f"unreadable lvstore metadata: {e}") from e
    if not isinstance(record, dict):
        raise OperationError(errno.EILSEQ, "lvstore metadata is not an object")
    return record
