"""The dashboard's text panels as HTML: status line, numbers, error records, stream series.

Everything the server sends is escaped (file names are user data).  Fields are read defensively:
a field the server does not send shows as "-", and fields this module does not know (added by
newer servers) appear in the "all fields" table and, when their name says lag, uptime, received,
missing, rejected, malformed, device or engine, as a card of their own.  Integrator builds in
progress (``builds``) and stream series (``streams.series``) get panels with progress bars.
"""

import html
import math
import time

from .watch import finished_count

#: flattened names not shown in the "all fields" table (drawn elsewhere, or bulky)
HIDDEN = ("errors.recent", "array", "filename")
#: words that promote an unknown field to a card
CARD_WORDS = ("lag", "uptime", "received", "missing", "rejected", "malformed", "device", "engine")
#: columns shown first in the series table (others follow in the server's order)
SERIES_COLUMNS = ("received", "integrated", "errors", "missing", "rate", "lag", "lag s")

GREEN, RED, GREY = "#1a7f37", "#c62828", "#6b7280"


def esc(value):
    return html.escape(str(value), quote=True)


def fmt(value, key=""):
    """A field's value for display: numbers rounded, seconds of uptime as h:mm:ss."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if "uptime" in key:
            return hms(value)
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return hms(value) if "uptime" in key else f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def flatten(data, prefix=""):
    """Scalar fields of nested dicts as {"queue.state": "running", ...}; lists of dicts left out."""
    out = {}
    for key, value in (data or {}).items():
        name = f"{prefix}{key}"
        if name in HIDDEN:
            continue
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            continue
        else:
            out[name] = value
    return out


def first(flat, *names, word=None):
    """The first of ``names`` in ``flat``, else the first key whose last part contains ``word``."""
    for n in names:
        if n in flat:
            return n, flat[n]
    if word:
        for k, v in flat.items():
            if word in k.rsplit(".", 1)[-1].lower():
                return k, v
    return None, None


def status_html(snap, now=None):
    """The line at the top: server answering or not, since when, the last problem."""
    now = time.time() if now is None else now
    url = esc(snap.url)
    if snap.answering is None:
        return (
            f'<div class="gs-status" style="color:{GREY};font-size:18px">'
            f"&#9679; connecting to {url} ...</div>"
        )
    since = "" if snap.since is None else time.strftime("%H:%M:%S", time.localtime(snap.since))
    if not snap.answering:
        last = (
            "never answered"
            if snap.last_answer is None
            else f"last answer {now - snap.last_answer:.0f} s ago"
        )
        return (
            f'<div class="gs-status" style="color:{RED};font-size:18px;font-weight:bold">'
            f"&#9679; server not answering</div>"
            f'<div style="color:{GREY}">{url}: {esc(snap.problem or "")} since {since} '
            f"({last}); still trying</div>"
        )
    note = f' &mdash; <span style="color:{RED}">{esc(snap.problem)}</span>' if snap.problem else ""
    stamp = time.strftime("%H:%M:%S", time.localtime(snap.last_answer or now))
    return (
        f'<div class="gs-status" style="color:{GREEN};font-size:18px;font-weight:bold">'
        f"&#9679; server answering</div>"
        f'<div style="color:{GREY}">{url}: answering since {since}, last answer '
        f"{stamp}{note}</div>"
    )


def _card(label, value, title="", colour="#111"):
    return (
        f'<div title="{esc(title)}" style="display:inline-block;min-width:118px;margin:3px;'
        f'padding:6px 10px;border:1px solid #d0d7de;border-radius:6px;background:#f6f8fa">'
        f'<div style="font-size:11px;color:{GREY}">{esc(label)}</div>'
        f'<div class="gs-card" data-field="{esc(label)}" style="font-size:20px;'
        f'color:{colour}">{esc(value)}</div></div>'
    )


def lag_text(data, flat):
    """(text, tooltip) of the lag: frames waiting over the stream series, else a ``*lag*`` field."""
    series = [v for _, v in series_of(data)]
    frames = [v["lag"] for v in series if isinstance(v.get("lag"), (int, float))]
    secs = [v["lag s"] for v in series if isinstance(v.get("lag s"), (int, float))]
    if frames:
        text = f"{fmt(sum(frames))} fr" + (f" ({max(secs):.2g} s)" if secs else "")
        return text, "stream series: frames received not yet integrated (seconds at the rate)"
    key, value = first(flat, "stat.lag", word="lag")
    if key is None:
        return "-", "not reported by this server"
    seconds = key.endswith((" s", "_s", "seconds")) and isinstance(value, (int, float))
    return fmt(value, key) + (" s" if seconds else ""), key


def cards_html(snap):
    """The numbers: queue, frames finished, curves, errors, frames/s, lag, engine, uptime ..."""
    d = snap.data or {}
    flat = flatten(d)
    stat = d.get("stat") or {}
    queue = d.get("queue") or {}
    errors = (d.get("errors") or {}).get("count", queue.get("errors"))
    rate_now = snap.rate[-1][1] if snap.rate else None
    state = queue.get("state", "no queue" if d and "queue" not in d else None)
    cards = [
        (
            "state",
            fmt(state),
            "queue.state" + (f": {queue.get('failure')}" if queue.get("failure") else ""),
        ),
        ("folder", fmt(queue.get("directory")), "queue.directory (relative to the base folder)"),
        ("queue length", fmt(stat.get("queue length")), "stat: frames not finished yet"),
        (
            "frames finished",
            fmt(finished_count({"stat": stat})),
            "stat: images processed (curves) + images failed (error records) since the "
            "server started",
        ),
        (
            "frames failed",
            fmt(stat.get("images failed")),
            "stat: images failed (error records) since the server started",
        ),
        ("curves", fmt(stat.get("pics")), "stat: pics, curves written by this queue"),
        ("errors", fmt(errors), "error records of this queue"),
        ("skipped", fmt(queue.get("skipped")), "queue.skipped: curve already up to date"),
        ("dropped", fmt(queue.get("dropped")), "queue.dropped: by abort or shutdown"),
        (
            "frames/s now",
            fmt(rate_now),
            "frames finished per second over the last 5 s (measured by the dashboard)",
        ),
        (
            "frames/s queue",
            fmt(stat.get("frames per sec")),
            "stat: frames per sec (pics / time interval)",
        ),
    ]
    cards.append(("lag", *lag_text(d, flat)))
    k, v = first(flat, "queue.backend", "engine", word="engine")
    cards.append(("engine", fmt(v), k or "not reported (no queue yet)"))
    k, v = first(flat, "uptime", "stat.uptime", "server.uptime", word="uptime")
    cards.append(("uptime", fmt(v, "uptime"), k or "not reported by this server"))
    feeder = d.get("feeder") or {}
    if feeder:
        age = feeder.get("last message age")
        cards.append(
            (
                "feeder messages",
                fmt(feeder.get("messages")),
                f"last message {fmt(age)} s ago" if age is not None else "none yet",
            )
        )
    shown = {
        "stat.lag",
        "queue.backend",
        "engine",
        "uptime",
        "stat.uptime",
        "server.uptime",
        "queue.state",
        "queue.directory",
        "queue.skipped",
        "queue.dropped",
    }
    shown.update(x[2] for x in cards if x[2] in flat)
    for key, value in flat.items():  # fields of newer servers worth a card
        last = key.rsplit(".", 1)[-1].lower()
        if (
            key not in shown
            and any(w in last for w in CARD_WORDS)
            and not isinstance(value, (dict, list))
        ):
            cards.append((key, fmt(value, last), key))
    colour = {"errors": RED if errors else "#111"}
    return "".join(_card(lbl, val, title, colour.get(lbl, "#111")) for lbl, val, title in cards)


def errors_html(data, limit=50):
    """The error records, newest first: file (or image id) and reason; then the stream's."""
    return _queue_errors_html(data, limit) + _stream_errors_html(data, limit)


def _stream_errors_html(data, limit):
    """``streams["recent errors"]``: {time, series_id, image_id, kind, error}, newest first."""
    streams = (data or {}).get("streams")
    recent = streams.get("recent errors") if isinstance(streams, dict) else None
    if not isinstance(recent, list) or not recent:
        return ""
    rows = []
    for rec in list(reversed(recent))[:limit]:
        if not isinstance(rec, dict):
            continue
        where = f"series {rec.get('series_id', '?')}"
        if rec.get("image_id") is not None:
            where += f" image {rec['image_id']}"
        kind = rec.get("kind")
        reason = (
            f"{kind}: {rec.get('error', '')}" if kind and kind != "error" else rec.get("error", "")
        )
        when = (
            time.strftime("%H:%M:%S", time.localtime(rec["time"]))
            if isinstance(rec.get("time"), (int, float))
            else ""
        )
        rows.append(
            f'<tr class="gs-error"><td style="padding:2px 8px;color:{GREY}">{when}</td>'
            f'<td style="padding:2px 8px;font-family:monospace">{esc(where)}</td>'
            f'<td style="padding:2px 8px;color:{RED}">{esc(reason)}</td></tr>'
        )
    return (
        "<div style='margin-top:6px'><b>stream error records</b> (newest first)</div>"
        '<table style="border-collapse:collapse;font-size:13px">' + "".join(rows) + "</table>"
    )


def _queue_errors_html(data, limit):
    errors = (data or {}).get("errors") or {}
    recent = errors.get("recent") or []
    count = errors.get("count", len(recent))
    if not recent:
        return f'<div style="color:{GREY}">no error records in this queue</div>'
    rows = []
    for rec in list(reversed(recent))[:limit]:
        if not isinstance(rec, dict):
            rec = {"error": rec}
        where = rec.get("file", rec.get("image_id", rec.get("image", "")))
        rows.append(
            f'<tr class="gs-error"><td style="padding:2px 8px;font-family:monospace">'
            f'{esc(where)}</td><td style="padding:2px 8px;color:{RED}">'
            f"{esc(rec.get('error', rec.get('reason', '')))}</td></tr>"
        )
    return (
        f"<div><b>{fmt(count)} error record{'s' if count != 1 else ''}</b> in this queue "
        f"(newest first, last {len(recent)} kept by the server)</div>"
        f'<table style="border-collapse:collapse;font-size:13px">'
        f'<tr style="text-align:left;color:{GREY}"><th>file / image</th><th>reason</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def series_of(data):
    """Stream series in an answer as [(name, {field: value})].

    Reads ``streams.series`` (a list of dicts with ``series_id``, the stream consumer's form) and,
    defensively, ``series``/``streams`` as a list of dicts or a dict of dicts.
    """
    data = data or {}
    streams = data.get("streams")
    candidates = [
        streams.get("series") if isinstance(streams, dict) else None,
        data.get("series"),
        streams,
    ]
    for value in candidates:
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            return [(str(k), v) for k, v in value.items()]
        if isinstance(value, list) and any(isinstance(v, dict) for v in value):
            return [
                (str(v.get("series_id", v.get("id", v.get("name", i)))), v)
                for i, v in enumerate(value)
                if isinstance(v, dict)
            ]
    return []


def progress_bar(fraction, text=""):
    """A small bar for a fraction in [0, 1] (clipped), with ``text`` beside it."""
    pct = max(0.0, min(1.0, float(fraction))) * 100
    return (
        f"<span style='display:inline-block;width:90px;height:9px;background:#e5e7eb;"
        f"border-radius:4px;vertical-align:middle'><span style='display:block;height:9px;"
        f"width:{pct:.0f}%;background:#2563eb;border-radius:4px'></span></span> "
        f"{esc(text or f'{pct:.0f} %')}"
    )


def series_html(data):
    """A table of stream series: progress, received/integrated/errors/missing/rate/lag, rest."""
    series = series_of(data)
    if not series:
        return ""
    cols = [c for c in SERIES_COLUMNS if any(c in s for _, s in series)]
    for _, s in series:
        cols += [
            k
            for k, v in s.items()
            if k not in cols
            and not isinstance(v, (dict, list))
            and k not in ("series_id", "name", "id")
        ]

    def progress(s):
        done, total = s.get("integrated"), s.get("expected")
        if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total > 0:
            return progress_bar(done / total, f"{fmt(done)} / {fmt(total)}")
        return "-"

    head = "".join(f"<th style='padding:2px 8px'>{esc(c)}</th>" for c in cols)
    body = "".join(
        "<tr class='gs-series'><td style='padding:2px 8px'><b>"
        + esc(name)
        + "</b></td>"
        + f"<td style='padding:2px 8px'>{progress(s)}</td>"
        + "".join(
            f"<td style='padding:2px 8px;text-align:right'>{esc(fmt(s.get(c), c))}</td>"
            for c in cols
        )
        + "</tr>"
        for name, s in series
    )
    streams = (data or {}).get("streams")
    about = ""
    if isinstance(streams, dict):
        about = ", ".join(
            f"{esc(k)} {esc(fmt(v))}" for k, v in streams.items() if not isinstance(v, (dict, list))
        )
    return (
        "<div><b>stream series</b> "
        + (f"<span style='color:#6b7280'>({about})</span>" if about else "")
        + "</div>"
        f"<table style='border-collapse:collapse;font-size:13px'>"
        f"<tr style='color:{GREY}'><th style='padding:2px 8px'>series</th>"
        f"<th style='padding:2px 8px'>progress</th>{head}</tr>{body}</table>"
    )


def builds_html(data):
    """Integrator builds in progress (``builds``: label, state, progress, rows, elapsed)."""
    builds = [b for b in ((data or {}).get("builds") or []) if isinstance(b, dict)]
    if not builds:
        return ""
    lines = []
    for b in builds:
        frac = b.get("progress")
        bar = progress_bar(frac) if isinstance(frac, (int, float)) else ""
        rows = b.get("rows")
        rows = (
            f" rows {fmt(rows[0])} / {fmt(rows[1])}"
            if isinstance(rows, list) and len(rows) == 2
            else ""
        )
        elapsed = b.get("elapsed")
        lines.append(
            f"<div class='gs-build'>building the integration matrix for "
            f"<b>{esc(b.get('label', b.get('key', '?')))}</b> "
            f"({esc(b.get('state', ''))}): {bar}{esc(rows)}"
            + (f", {fmt(elapsed)} s" if elapsed is not None else "")
            + "</div>"
        )
    return "".join(lines)


def fields_html(data):
    """Every scalar field of the last ``stat`` answer (so fields of newer servers show too)."""
    flat = flatten(data)
    if not flat:
        return ""
    rows = "".join(
        f"<tr><td style='padding:1px 8px;color:{GREY}'>{esc(k)}</td>"
        f"<td style='padding:1px 8px'>{esc(fmt(v, k))}</td></tr>"
        for k, v in flat.items()
    )
    return f"<table style='font-size:12px;font-family:monospace'>{rows}</table>"
