"""Live detector streams: DECTRIS Stream V2 (CBOR) and Stream V1 (multipart JSON) over ZeroMQ.

Modules: :mod:`.codecs` (bslz4 / lz4 / raw payloads), :mod:`.v2` and :mod:`.v1` (the two
message formats, decoding and, for the simulator, encoding), :mod:`.series` (per-series
bookkeeping: received, integrated, errors, missing, rate, lag; error records) and
:mod:`.consumer` (the receive -> decode -> integrate -> write pipeline, its writer stage in
:mod:`.writer`).  See docs/streams.md.
"""
