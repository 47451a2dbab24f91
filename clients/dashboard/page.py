"""The dashboard page: one Bokeh document per browser tab, fed by the shared :class:`ServerWatch`.

A periodic callback (every ``refresh_ms``, default 500 ms) redraws what changed since the last
snapshot: status line, numbers, frames/s chart, the latest curve (log I vs q, the previous ones
faded behind it), a waterfall of the recent curves (log10 I, time vs q), error records and
stream series; with ``--maps`` the newest grazing-incidence map (:mod:`.maps`: log colour scale,
empty cells grey, both axes named from the file).  Bokeh sends the changes to the browser over its
websocket; the page never reloads.
"""

import time

import numpy as np

from . import panels

#: previous curves drawn faded behind the latest one
N_FADED = 10


def _positive(intensity):
    """Intensity for a log axis: values <= 0 become NaN (gaps in the line)."""
    out = np.array(intensity, dtype=float)
    out[~(out > 0)] = np.nan
    return out


def local_ms(wall):
    """Wall time (s since the epoch) as ms for Bokeh's datetime axis, which shows UTC: shifted
    by this computer's UTC offset so the chart's clock matches the other times on the page."""
    return (wall + time.localtime(wall).tm_gmtoff) * 1000.0


def waterfall_image(curves):
    """(log10 I image [rows = curves, oldest first], q) for curves on a common q grid."""
    q = curves[-1].q
    rows = [c.intensity for c in curves if c.q.shape == q.shape]
    with np.errstate(divide="ignore", invalid="ignore"):
        img = np.log10(_positive(np.vstack(rows)))
    return img.astype(np.float32), q  # float32: half the bytes sent to the browser


def make_document(doc, watch, refresh_ms=500, n_faded=N_FADED, maps=None):
    """Fill a Bokeh ``doc`` with the dashboard of ``watch`` (a started :class:`ServerWatch`)
    and, with ``maps`` (a started :class:`~.maps.MapWatch`), the newest grazing-incidence map."""
    from bokeh.layouts import column, row
    from bokeh.models import (
        ColorBar,
        ColumnDataSource,
        DatetimeTickFormatter,
        Div,
        HoverTool,
        LinearColorMapper,
        LogColorMapper,
        Toggle,
    )
    from bokeh.palettes import Viridis256
    from bokeh.plotting import figure

    doc.title = "gpusaxs dashboard"
    title = Div(text="<h2 style='margin:4px 0'>gpusaxs &mdash; integration service</h2>")
    status = Div(text="", name="status")
    cards = Div(text="", name="cards", sizing_mode="stretch_width")
    errors = Div(text="", name="errors", width=560)
    series = Div(text="", name="series", sizing_mode="stretch_width", visible=False)
    builds = Div(text="", name="builds", sizing_mode="stretch_width", visible=False)
    fields = Div(text="", name="fields", sizing_mode="stretch_width", visible=False)
    show_fields = Toggle(label="all fields of the last stat answer", active=False, width=260)
    show_fields.js_link("active", fields, "visible")
    curve_note = Div(text="", name="curve_note")

    rate_src = ColumnDataSource({"t": [], "rate": []}, name="frames_per_s")
    rate_fig = figure(
        title="frames finished per second (5 s window)",
        height=250,
        width=560,
        x_axis_type="datetime",
        toolbar_location=None,
        y_range=(0, 1),
    )
    rate_fig.line("t", "rate", source=rate_src, line_width=2, color="#1f77b4")
    rate_fig.xaxis.formatter = DatetimeTickFormatter(
        seconds="%H:%M:%S", minsec="%H:%M:%S", minutes="%H:%M", hourmin="%H:%M"
    )
    rate_fig.yaxis.axis_label = "frames/s"
    rate_fig.y_range.start = 0

    faded_src = ColumnDataSource({"xs": [], "ys": [], "alpha": []})
    latest_src = ColumnDataSource({"q": [], "I": []}, name="latest_curve")
    curve_fig = figure(
        title="latest curve",
        name="curve_figure",
        height=380,
        width=620,
        y_axis_type="log",
        tools="pan,wheel_zoom,box_zoom,reset,save",
    )
    curve_fig.multi_line(
        "xs", "ys", source=faded_src, line_alpha="alpha", color="#7f7f7f", line_width=1
    )
    curve_fig.line("q", "I", source=latest_src, line_width=2, color="#d62728")
    curve_fig.xaxis.axis_label = "q (nm\u207b\u00b9)"
    curve_fig.yaxis.axis_label = "intensity I (a.u., log scale)"
    curve_fig.add_tools(
        HoverTool(
            tooltips=[("q (nm^-1)", "@q{0.000}"), ("I", "@I{0.00}")],
            renderers=[curve_fig.renderers[-1]],
        )
    )

    heat_src = ColumnDataSource(
        {"image": [], "x": [], "y": [], "dw": [], "dh": []}, name="waterfall"
    )
    mapper = LinearColorMapper(palette=Viridis256, nan_color="white")
    heat_fig = figure(
        title="recent curves: log10 I (oldest at the bottom)",
        height=380,
        width=560,
        toolbar_location=None,
    )
    heat_fig.image(
        image="image", x="x", y="y", dw="dw", dh="dh", source=heat_src, color_mapper=mapper
    )
    heat_fig.xaxis.axis_label = "q (nm\u207b\u00b9)"
    heat_fig.yaxis.axis_label = "time (curve received)"
    heat_fig.add_layout(ColorBar(color_mapper=mapper, title="log10 I", width=10), "right")

    map_src = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []}, name="gi_map")
    map_mapper = LogColorMapper(palette=Viridis256, nan_color=(0, 0, 0, 0))  # empty: see-through
    map_fig = figure(
        title="grazing-incidence map",
        name="map_figure",
        height=420,
        width=520,
        visible=False,  # until the first map
        tools="pan,wheel_zoom,box_zoom,reset,save",
        background_fill_color="#c8c8c8",  # what the transparent empty cells show
    )
    map_fig.image(
        image="image", x="x", y="y", dw="dw", dh="dh", source=map_src, color_mapper=map_mapper
    )
    map_fig.add_layout(ColorBar(color_mapper=map_mapper, title="I (log)", width=10), "right")
    map_note = Div(text="", name="map_note")

    doc.add_root(
        column(
            row(title),
            status,
            cards,
            builds,
            series,
            row(column(curve_fig, curve_note), heat_fig, column(map_fig, map_note)),
            row(rate_fig, column(Div(text="<b>error records</b>"), errors)),
            show_fields,
            fields,
            sizing_mode="stretch_width",
        )
    )

    seen = {"version": None, "curves": None, "maps": None}

    def draw_map():
        gimap, n_seen, note = maps.snapshot()
        map_note.text = (
            "" if note is None else f"<span style='color:#6b7280'>{panels.esc(note)}</span>"
        )
        if gimap is None or n_seen == seen["maps"]:
            return
        seen["maps"] = n_seen
        x0, y0, dw, dh = gimap.extent()
        span = gimap.log_range()
        if span is not None:
            map_mapper.low, map_mapper.high = span
        map_src.data = {"image": [gimap.image], "x": [x0], "y": [y0], "dw": [dw], "dh": [dh]}
        map_fig.xaxis.axis_label = gimap.xlabel
        map_fig.yaxis.axis_label = gimap.ylabel
        map_fig.title.text = (
            f"map: {gimap.title}   ({time.strftime('%H:%M:%S', time.localtime(gimap.mtime))})"
        )
        map_fig.visible = True

    def draw_curves(snap):
        curves = snap.curves
        if not curves:
            latest_src.data = {"q": [], "I": []}
            faded_src.data = {"xs": [], "ys": [], "alpha": []}
            heat_src.data = {"image": [], "x": [], "y": [], "dw": [], "dh": []}
            return
        last = curves[-1]
        latest_src.data = {"q": last.q, "I": _positive(last.intensity)}
        prev = curves[-1 - n_faded : -1]
        faded_src.data = {
            "xs": [c.q for c in prev],
            "ys": [_positive(c.intensity) for c in prev],
            "alpha": list(np.linspace(0.08, 0.45, len(prev))),
        }
        curve_fig.title.text = (
            f"latest curve: {last.filename}   "
            f"({time.strftime('%H:%M:%S', time.localtime(last.received))})"
        )
        img, q = waterfall_image(curves)
        finite = img[np.isfinite(img)]
        if finite.size:
            mapper.low, mapper.high = (
                float(np.percentile(finite, 1)),
                float(np.percentile(finite, 99.5)),
            )
        qmin, qmax = float(np.nanmin(q)), float(np.nanmax(q))
        heat_src.data = {
            "image": [img],
            "x": [qmin],
            "y": [0],
            "dw": [qmax - qmin],
            "dh": [img.shape[0]],
        }
        n = img.shape[0]
        ticks = sorted({0, n // 2, n - 1}) if n > 1 else [0]
        heat_fig.yaxis.ticker = [t + 0.5 for t in ticks]
        times = [c.received for c in curves if c.q.shape == q.shape]
        heat_fig.yaxis.major_label_overrides = {
            t + 0.5: time.strftime("%H:%M:%S", time.localtime(times[t])) for t in ticks
        }

    def update():
        snap = watch.snapshot()
        status.text = panels.status_html(snap)
        if maps is not None:
            draw_map()
        if snap.version == seen["version"]:
            return
        seen["version"] = snap.version
        cards.text = panels.cards_html(snap)
        errors.text = panels.errors_html(snap.data)
        for div, text in (
            (series, panels.series_html(snap.data)),
            (builds, panels.builds_html(snap.data)),
        ):
            div.text, div.visible = text, bool(text)  # empty panels take no room
        fields.text = panels.fields_html(snap.data)
        curve_note.text = (
            ""
            if snap.curve_note is None
            else f"<span style='color:#6b7280'>{panels.esc(snap.curve_note)}</span>"
        )
        if snap.rate:
            t, r = zip(*snap.rate, strict=True)
            rate_src.data = {"t": [local_ms(x) for x in t], "rate": list(r)}
            rate_fig.y_range.end = max(1.0, 1.15 * max(r))
        if snap.curves_seen != seen["curves"] or not snap.curves:
            seen["curves"] = snap.curves_seen
            draw_curves(snap)

    update()
    doc.add_periodic_callback(update, refresh_ms)
