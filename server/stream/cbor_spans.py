"""Where a Stream V2 message's frame payloads lie, so that cbor2 parses the message without them.

``cbor2.loads`` copies every byte string into a fresh ``bytes``: for an image message that is
the whole compressed frame (0.6 MB for a PILATUS 1M, 4 MB for an EIGER 16M), and the fresh
allocation's page faults cost more than the copy (0.3-0.4 ms of the receiver's CPU per PILATUS
frame).  :func:`split_payloads` walks the CBOR item headers (RFC 8949 section 3) of the message,
finds the byte strings of at least ``MIN_BYTES`` that are a frame payload (the content of a typed
array, tags 64-87, or the third element of a tag-56500 ``[algorithm, modifier, bytes]``) and
returns the message with each of them replaced by a small placeholder tag
(``PLACEHOLDER_TAG``, content the payload's index) plus the payloads as zero-copy views of the
message buffer.  The walk gives up (``None``: the caller parses the message as it is, with the
same result as before) on anything it does not need to understand: indefinite lengths, reserved
header values, tags other than the ones a DECTRIS message uses, a placeholder tag already in
the message, more than ``MAX_ITEMS`` items or ``MAX_DEPTH`` levels, truncated or trailing
bytes.  The splice happens at item boundaries only, so the parsed structure is the message's own.
"""

import struct

#: byte strings shorter than this stay in the message (cbor2 copies them; cheap)
MIN_BYTES = 1 << 16
#: an unassigned tag number (four-byte form) marking a payload taken out of the message
PLACEHOLDER_TAG = 0x67707378
_PLACEHOLDER = b"\xda" + struct.pack(">I", PLACEHOLDER_TAG)
MAX_ITEMS = 4096
MAX_DEPTH = 32
TAG_COMPRESSION = 56500
#: tags a DECTRIS message uses: dates, self-described CBOR, multi-dimensional and typed arrays,
#: the compression tag
ALLOWED_TAGS = frozenset({0, 1, 40, 1040, 55799, TAG_COMPRESSION, *range(64, 88)})

_ARRAY_56500 = -1  # the context of an array that is the content of tag 56500


def _placeholder(k):
    return _PLACEHOLDER + (bytes([k]) if k < 24 else b"\x19" + struct.pack(">H", k))


def split_payloads(raw):
    """``(message, payloads)``: the message (bytes) with its large payloads replaced by
    placeholders, and the payloads (memoryviews of ``raw``); ``None`` when the message has no
    such payload or the walk gives up (then parse ``raw`` itself)."""
    try:
        mv = memoryview(raw).cast("B")
    except (TypeError, ValueError):
        return None
    spans = _walk(mv)
    if not spans:
        return None
    parts, prev = [], 0
    for k, (item, _, stop) in enumerate(spans):
        parts.append(mv[prev:item])
        parts.append(_placeholder(k))
        prev = stop
    parts.append(mv[prev:])
    return b"".join(parts), [mv[start:stop] for _, start, stop in spans]


def _walk(mv):
    """[(item start, data start, data stop)] of the payload byte strings of the one CBOR item
    that ``mv`` holds; None where the walk gives up."""
    n, pos, items = len(mv), 0, 0
    stack = []  # [items left, context]; context: a tag number, _ARRAY_56500 or None
    spans = []
    while True:
        if pos >= n:
            return None
        item = pos
        ib = mv[pos]
        major, ai = ib >> 5, ib & 31
        pos += 1
        if ai < 24:
            val = ai
        elif ai < 28:
            size = 1 << (ai - 24)
            if pos + size > n:
                return None
            val = int.from_bytes(mv[pos : pos + size], "big")
            pos += size
        else:  # reserved, indefinite length, break
            return None
        items += 1
        if items > MAX_ITEMS:
            return None
        opened = None
        if major == 2 or major == 3:
            if val > n - pos:
                return None
            if major == 2 and val >= MIN_BYTES and stack:
                left, ctx = stack[-1]
                if (ctx is not None and 64 <= ctx <= 87) or (ctx == _ARRAY_56500 and left == 1):
                    spans.append((item, pos, pos + val))
            pos += val
        elif major == 4 or major == 5:
            count = val if major == 4 else 2 * val
            if count > n - pos:  # every item takes a byte at least
                return None
            if count:
                tagged = stack and stack[-1][1] == TAG_COMPRESSION
                opened = [count, _ARRAY_56500 if major == 4 and tagged and val == 3 else None]
        elif major == 6:
            if val not in ALLOWED_TAGS:
                return None
            opened = [1, val]
        if opened is not None:
            if len(stack) >= MAX_DEPTH:
                return None
            stack.append(opened)
            continue
        # the item is complete: so are the containers it completes
        while stack:
            stack[-1][0] -= 1
            if stack[-1][0]:
                break
            stack.pop()
        if not stack:
            return spans if pos == n else None
