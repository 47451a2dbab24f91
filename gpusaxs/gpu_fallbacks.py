"""The process-wide record of the GPU engine's fallbacks: which path failed, what replaced it
and why (``engine_fallbacks()``, in ``backend_info()``; ``fallback_lines()`` in saxsdog's
summary and the server's ``stat``), and where bslz4 frames were decoded (``decode_counts()``,
``decode_lines()``, issue 26)."""

__all__ = [
    "record",
    "engine_fallbacks",
    "fallback_lines",
    "record_decode",
    "decode_counts",
    "decode_lines",
]

#: every fallback taken in this process, oldest first (dicts: from, to, reason[, dtype])
_FALLBACKS: list[dict[str, str]] = []


def record(entry: dict[str, str]) -> None:
    """Add one fallback (an engine's own list keeps the same dict)."""
    _FALLBACKS.append(entry)


def engine_fallbacks() -> list[dict[str, str]]:
    """Fallbacks taken in this process (list of dicts: from, to, reason), oldest first."""
    return [dict(f) for f in _FALLBACKS]


def fallback_lines() -> list[str]:
    """engine_fallbacks() in words, one line each (saxsdog's summary, the server's stat)."""
    return [f"{f['from']} -> {f['to']}: {f['reason']}" for f in _FALLBACKS]


#: bslz4 frames decoded in this process, per path ("device": bslz4.cu; "host": bitshuffle on
#: the CPU), with the bytes read compressed and written decoded, and frames refused
_DECODES: dict[str, int] = {}


def record_decode(path: str, frames: int, compressed_bytes: int, decoded_bytes: int) -> None:
    """Count ``frames`` bslz4 frames decoded on ``path`` ("device", "host" or "failed")."""
    for key, n in (
        (f"{path}_frames", frames),
        (f"{path}_compressed_bytes", compressed_bytes),
        (f"{path}_decoded_bytes", decoded_bytes),
    ):
        _DECODES[key] = _DECODES.get(key, 0) + int(n)


def decode_counts() -> dict[str, int]:
    """{"device_frames", "device_compressed_bytes", ..., "host_frames", "failed_frames", ...}:
    the bslz4 frames decoded in this process per path (in ``backend_info()``)."""
    return dict(_DECODES)


def decode_lines() -> list[str]:
    """decode_counts() in words (saxsdog's summary, the server's stat); empty when none."""
    lines = []
    for path, where in (("device", "on the device"), ("host", "on the host"), ("failed", "")):
        n = _DECODES.get(f"{path}_frames", 0)
        if not n:
            continue
        if path == "failed":
            lines.append(f"{n} bslz4 frames refused by the decoder")
            continue
        c = _DECODES.get(f"{path}_compressed_bytes", 0)
        d = _DECODES.get(f"{path}_decoded_bytes", 0)
        ratio = f", compression {d / c:.2f}x" if c else ""
        lines.append(f"{n} bslz4 frames decoded {where} ({c / 1e6:.1f} MB compressed{ratio})")
    return lines
