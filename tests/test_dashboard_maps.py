"""The dashboard's grazing-incidence map view without a browser: a .gi.nxs map read as the page's
image (written by the project's writer and, independently, with h5py in the NeXus layout), the
folder watch taking the newest map, and the page's models following it (issue 28)."""

import os

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from test_dashboard import FakeClient  # noqa: E402

from gpusaxs.clients.dashboard.maps import MapWatch, newest_map, read_map  # noqa: E402
from gpusaxs.clients.dashboard.page import make_document  # noqa: E402
from gpusaxs.clients.dashboard.watch import ServerWatch  # noqa: E402
from gpusaxs.grazing_outputs import write_map  # noqa: E402

COMMON = dict(incident_angle=0.5, tilt_angle=2.0, sample_orientation=1, split_pixels=False)


def a_map(seed=0, n_oop=30, n_ip=40):
    """A map with a missing wedge (NaN) above qip = 0, a zero cell and positive cells."""
    rng = np.random.default_rng(seed)
    qip = np.linspace(-2.0, 2.0, n_ip)
    qoop = np.linspace(0.0, 3.0, n_oop)
    grid = rng.uniform(1.0, 1e4, (n_oop, n_ip))
    grid[10:, 18:22] = np.nan
    grid[0, 0] = 0.0
    return grid, qip, qoop


def test_a_map_of_the_project_writer_reads_as_the_page_image(tmp_path):
    grid, qip, qoop = a_map()
    path = tmp_path / "frame_00001.gi.nxs"
    write_map(path, grid, np.sqrt(grid), (qip, qoop, "qip_nm^-1", "qoop_nm^-1"), COMMON, "f")
    m = read_map(path)
    assert m.title == "frame_00001"
    assert (m.xlabel, m.ylabel) == ("qip (1/nm)", "qoop (1/nm)")
    np.testing.assert_allclose(m.x, qip)
    np.testing.assert_allclose(m.y, qoop)
    assert m.image.dtype == np.float32 and m.image.shape == (30, 40)
    assert np.isnan(m.image[10:, 18:22]).all() and np.isnan(m.image[0, 0])  # no colour
    keep = np.isfinite(grid) & (grid > 0)
    np.testing.assert_allclose(m.image[keep], grid[keep], rtol=1e-6)
    x0, y0, dw, dh = m.extent()  # cell edges: half a cell beyond the first and last centres
    step_ip, step_oop = qip[1] - qip[0], qoop[1] - qoop[0]
    assert x0 == pytest.approx(-2.0 - step_ip / 2) and dw == pytest.approx(4.0 + step_ip)
    assert y0 == pytest.approx(-step_oop / 2) and dh == pytest.approx(3.0 + step_oop)
    low, high = m.log_range()
    assert 1.0 <= low < high <= 1e4


def test_a_nexus_map_written_with_h5py_reads_with_its_own_axes(tmp_path):
    """Another writer's layout: @default chain, @signal, @axes (vertical first), units."""
    angles_v = np.linspace(0.0, 5.0, 12)
    angles_h = np.linspace(-4.0, 4.0, 16)
    signal = np.outer(np.exp(-angles_v), np.ones(16)) * 100
    signal[:3, 7:9] = np.nan
    path = tmp_path / "other.gi.nxs"
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "scan"
        entry = f.create_group("scan")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "plot"
        entry.create_group("notes").attrs["NX_class"] = "NXnote"
        data = entry.create_group("plot")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "counts"
        data.attrs["axes"] = np.array([b"exit_angle_vert", b"exit_angle_horz"])
        data["counts"] = signal
        data["exit_angle_vert"] = angles_v
        data["exit_angle_vert"].attrs["units"] = "degree"
        data["exit_angle_horz"] = angles_h
        data["exit_angle_horz"].attrs["units"] = "degree"
    m = read_map(path)
    assert m.title == "other"
    assert m.xlabel == "exit_angle_horz (degree)" and m.ylabel == "exit_angle_vert (degree)"
    np.testing.assert_allclose(m.x, angles_h)
    np.testing.assert_allclose(m.y, angles_v)
    assert np.isnan(m.image[:3, 7:9]).all()
    np.testing.assert_allclose(m.image[5], signal[5], rtol=1e-6)

    with h5py.File(tmp_path / "curve.gi.nxs", "w") as f:  # a 1D signal is not a map
        g = f.create_group("entry").create_group("data")
        g.attrs["signal"], g.attrs["axes"] = "I", "q"
        g["I"], g["q"] = np.ones(5), np.arange(5.0)
    with pytest.raises(ValueError, match="dimensions"):
        read_map(tmp_path / "curve.gi.nxs")


def test_the_watch_takes_the_newest_map_and_the_page_draws_it(tmp_path):
    pytest.importorskip("bokeh", reason="bokeh not installed (pip install '.[test]')")
    from bokeh.document import Document

    maps = MapWatch(tmp_path)
    doc = Document()
    make_document(doc, ServerWatch(FakeClient()), maps=maps)
    update = next(iter(doc.session_callbacks)).callback
    update()
    fig = doc.get_model_by_name("map_figure")
    assert not fig.visible  # no map yet: no room taken
    assert newest_map(tmp_path) is None

    axes = None
    for i, t in enumerate((100, 200)):
        grid, qip, qoop = a_map(seed=i)
        axes = (qip, qoop, "qip_nm^-1", "qoop_nm^-1")
        path = tmp_path / f"frame_{i}.gi.nxs"
        write_map(path, grid * (i + 1), grid, axes, COMMON, "f")
        os.utime(path, (t, t))
    (tmp_path / "frame_9.chi").write_text("not a map")
    assert newest_map(tmp_path)[1].endswith("frame_1.gi.nxs")
    maps.poll_once()
    update()
    assert fig.visible and "frame_1" in fig.title.text
    assert fig.xaxis[0].axis_label == "qip (1/nm)" and fig.yaxis[0].axis_label == "qoop (1/nm)"
    img = doc.get_model_by_name("gi_map").data["image"][0]
    grid, _, _ = a_map(seed=1)
    np.testing.assert_allclose(img[5], 2 * grid[5], rtol=1e-6)

    bad = tmp_path / "frame_2.gi.nxs"  # the newest file cannot be read: said, old map kept
    bad.write_bytes(b"not HDF5")
    os.utime(bad, (300, 300))
    maps.poll_once()
    update()
    assert "frame_2.gi.nxs" in doc.get_model_by_name("map_note").text
    assert "frame_1" in fig.title.text
    write_map(bad, grid, grid, axes, COMMON, "f")
    os.utime(bad, (400, 400))
    maps.poll_once()
    update()
    assert "frame_2" in fig.title.text and doc.get_model_by_name("map_note").text == ""
