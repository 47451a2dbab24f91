"""The process-wide record of the GPU engine's fallbacks: which path failed, what replaced it
and why (``engine_fallbacks()``, in ``backend_info()``; ``fallback_lines()`` in saxsdog's
summary and the server's ``stat``)."""

__all__ = ["record", "engine_fallbacks", "fallback_lines"]

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
