"""Checks of bitshuffle/LZ4 data in the HDF5 filter framing (HDF5 filter 32008, DECTRIS streams).

Layout: a 12-byte header (uncompressed size in bytes as big-endian uint64, block size in bytes
as big-endian uint32), then the blocks, each a big-endian uint32 compressed size and an LZ4
block, then the last ``n_elems % 8`` elements uncompressed.  bitshuffle trusts these sizes (a
lying block size or a cut payload makes it read past the buffer and kill the process), so
every payload from a file or the network is checked here before it is decoded.

Shared by the stream codecs (``gpusaxs.server.stream.codecs``) and the HDF5 frame reader
(:mod:`gpusaxs.io.frames`); each passes its own error class.
"""

import struct

__all__ = ["HEADER", "FILTER_ID", "Bslz4Error", "check_header", "check_blocks", "check_payload"]

HEADER = struct.Struct(">QI")
#: HDF5 filter id of bitshuffle (registered by hdf5plugin)
FILTER_ID = 32008
_BLOCK_SIZE = struct.Struct(">I")


class Bslz4Error(ValueError):
    """A bitshuffle/LZ4 payload whose framing does not match the frame it should hold."""


def check_header(mv, nbytes, itemsize, error=Bslz4Error, name="bslz4"):
    """Block size in bytes of the payload ``mv`` (bytes-like) that must hold ``nbytes`` bytes of
    ``itemsize``-byte elements; raises ``error`` on a short payload, a wrong size or a block
    size that is not a multiple of 8 elements."""
    if len(mv) < HEADER.size:
        raise error(f"{name} payload of {len(mv)} bytes is shorter than its header")
    total, block = HEADER.unpack_from(mv, 0)
    if total != nbytes:
        raise error(f"{name} header announces {total} bytes, the frame needs {nbytes}")
    if block == 0 or block % itemsize or (block // itemsize) % 8:
        raise error(f"{name} block size {block} bytes is not a multiple of 8 elements")
    return block


def check_blocks(mv, n_elems, block_elems, itemsize, error=Bslz4Error):
    """Walk the bitshuffle block headers of ``mv``: every block must lie inside the payload.

    Layout (bitshuffle ``bshuf_compress_lz4``): ``n_elems // block_elems`` full blocks, one last
    block of the remainder rounded down to a multiple of 8 elements, then the last
    ``n_elems % 8`` elements uncompressed.
    """
    leftover = (n_elems % 8) * itemsize
    plain = block_elems * itemsize
    bound = plain + plain // 255 + 16  # LZ4's worst case
    n_full = n_elems // block_elems
    last = ((n_elems % block_elems) - (n_elems % 8)) * itemsize
    pos, end = HEADER.size, len(mv) - leftover
    unpack = _BLOCK_SIZE.unpack_from
    for k in range(n_full + (last > 0)):
        if k == n_full:
            plain, bound = last, last + last // 255 + 16
        if pos + 4 > end:
            raise error("bslz4 payload truncated (block header)")
        (csize,) = unpack(mv, pos)
        if csize > bound:
            raise error(f"bslz4 block of {csize} bytes is larger than LZ4 allows")
        pos += 4 + csize
        if pos > end:
            raise error("bslz4 payload truncated (block data)")
    if pos != end:
        raise error(f"bslz4 payload has {end - pos} bytes more than its blocks")


def check_payload(mv, nbytes, itemsize, error=Bslz4Error):
    """Header and blocks of a payload holding ``nbytes`` bytes of ``itemsize``-byte elements."""
    mv = memoryview(mv).cast("B")
    block = check_header(mv, nbytes, itemsize, error)
    check_blocks(mv, nbytes // itemsize, block // itemsize, itemsize, error)
