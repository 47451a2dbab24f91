"""Grazing incidence (issue 28) against pyFAI 2026.9's FiberIntegrator on the real PILATUS
frame: the fiber coordinates of every pixel, the 2D maps (incident 2.0 deg; incident 0.5 deg
with tilt 3.0 deg), the 1D cuts, stacks in one pass and the missing wedge."""

import numpy as np
import pytest

import gpusaxs
from gpusaxs.fiber import FIBER_UNITS, GrazingBinning, fiber_map
from tests.helpers import pyfai_integrator, require_fiber_reference

pytest.importorskip("pyFAI")

NO_SPLIT = ("no", "histogram", "cython")
GEOMETRIES = [(2.0, 0.0), (0.5, 3.0)]  # (incident, tilt) in degrees


@pytest.fixture(scope="module")
def frame(reference_dir):
    """(calibration, image, gaps, pyFAI's mask, integrator, FiberIntegrator)."""
    require_fiber_reference()
    cal = gpusaxs.Calibration.from_file(reference_dir / "buf1_00000.calibration.json")
    image = gpusaxs.read_image(reference_dir / "buf1_00000.tif")
    gaps = image < 0  # -1/-2: invalid for us, to be masked for pyFAI
    integ = gpusaxs.Integrator(cal, backend="numpy", cache_dir=False)
    return cal, image, gaps, cal.load_mask() | gaps, integ, pyfai_integrator(cal, fiber=True)


def relative(ours, theirs, where):
    sel = where & np.isfinite(ours) & (theirs > 0)
    assert sel.sum() > 100, "too few cells to compare"
    return np.abs(ours[sel] - theirs[sel]) / theirs[sel]


@pytest.mark.parametrize("incident, tilt", GEOMETRIES)
@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.usefixtures("frozen_gc")  # pyFAI collects garbage per geometry
def test_coordinates_equal_pyfai(frame, incident, tilt, orientation):
    """Every fiber unit of every pixel centre, the 8 sample orientations."""
    from pyFAI.units import parse_fiber_unit

    cal, _, _, _, _, fi = frame
    inc, til = np.deg2rad(incident), np.deg2rad(tilt)
    binning = GrazingBinning(
        1, 1, incident_angle=inc, tilt_angle=til, sample_orientation=orientation
    )
    units = FIBER_UNITS if orientation in (1, 6) else ("qip_nm^-1", "qoop_nm^-1")
    for unit in units:
        fi.reset()  # pyFAI keeps unit arrays by name
        pu = parse_fiber_unit(
            unit, incident_angle=inc, tilt_angle=til, sample_orientation=orientation
        )
        theirs = fi.array_from_unit(unit=pu, typ="center", scale=True)
        ours = fiber_map(cal, unit, binning)
        diff = np.abs(ours - theirs)
        if unit.startswith("chigi"):  # +-180 deg are the same angle
            diff = np.minimum(diff, np.abs(diff - (360.0 if unit.endswith("deg") else 2 * np.pi)))
        assert np.nanmax(diff) <= 1e-9 * np.nanmax(np.abs(theirs)), unit


def pyfai_map(frame, incident, tilt, npt=100, **kwargs):
    _, image, _, mask, _, fi = frame
    return fi.integrate2d_grazing_incidence(
        image,
        npt_ip=npt,
        npt_oop=npt,
        incident_angle=incident,
        tilt_angle=tilt,
        angle_unit="deg",
        mask=mask,
        correctSolidAngle=False,
        method=NO_SPLIT,
        **kwargs,
    )


@pytest.mark.parametrize("incident, tilt", GEOMETRIES)
@pytest.mark.parametrize("split", [True, False])
def test_map_against_pyfai(frame, incident, tilt, split):
    """Axes within 1 % of a bin; median |dI|/I <= 2 % over cells where pyFAI has >= 30
    pixels (pixel centres binned alike without splitting: equal to float precision)."""
    _, image, gaps, _, integ, _ = frame
    theirs = pyfai_map(frame, incident, tilt)
    ours = integ.integrate2d_grazing_incidence(
        image,
        npt_ip=100,
        npt_oop=100,
        incident_angle=incident,
        tilt_angle=tilt,
        angle_unit="deg",
        mask=gaps,
        split_pixels=split,
    )
    assert ours.intensity.shape == theirs.intensity.shape == (100, 100)
    for a, b in ((ours.inplane, theirs.inplane), (ours.outofplane, theirs.outofplane)):
        assert np.max(np.abs(a - b)) <= 0.01 * (b[1] - b[0])
    rel = relative(ours.intensity, theirs.intensity, theirs.count >= 30)
    assert np.median(rel) <= (0.02 if split else 1e-6), np.median(rel)
    assert np.percentile(rel, 95) <= (0.02 if split else 1e-6)
    assert ours.ip_unit == "qip_nm^-1" and ours.oop_unit == "qoop_nm^-1"
    intensity, inplane, outofplane = ours
    assert intensity is ours.intensity and outofplane is ours.outofplane


@pytest.mark.parametrize("vertical", [True, False])
def test_cuts_against_pyfai(frame, vertical):
    """The 1D cuts (pyFAI's integrate1d_grazing_incidence), median |dI|/I <= 1 %. Angles in
    radians: pyFAI 2026.9's 1D method does not pass angle_unit on to its 2D one."""
    _, image, gaps, mask, integ, fi = frame
    kwargs = dict(
        npt_ip=200,
        npt_oop=200,
        incident_angle=np.deg2rad(0.5),
        tilt_angle=np.deg2rad(3.0),
        vertical_integration=vertical,
    )
    kwargs.update(ip_range=(-0.5, 0.5)) if vertical else kwargs.update(oop_range=(0.5, 1.5))
    theirs = fi.integrate1d_grazing_incidence(
        image, mask=mask, correctSolidAngle=False, method=NO_SPLIT, **kwargs
    )
    ours = integ.integrate1d_grazing_incidence(image, mask=gaps, error_model="poisson", **kwargs)
    x = theirs.integrated
    assert np.max(np.abs(ours.radial - x)) <= 0.01 * (x[1] - x[0])
    assert ours.unit == ("qoop_nm^-1" if vertical else "qip_nm^-1")
    rel = relative(ours.intensity, theirs.intensity, np.ones(len(x), bool))
    assert np.median(rel) <= 0.01, np.median(rel)
    assert np.all(ours.sigma[np.isfinite(ours.intensity)] > 0)


def test_stack_in_one_pass_equals_frame_by_frame(frame):
    _, image, gaps, _, integ, _ = frame
    stack = np.stack([image, image * 2, image * 3])
    kwargs = dict(npt_ip=80, npt_oop=60, incident_angle=0.5, tilt_angle=3.0, angle_unit="deg")
    batch = integ.integrate2d_grazing_incidence_batch(stack, mask=gaps, **kwargs)
    assert batch.intensity.shape == (3, 60, 80)
    for k in range(3):
        one = integ.integrate2d_grazing_incidence(stack[k], mask=gaps, **kwargs)
        np.testing.assert_allclose(batch.intensity[k], one.intensity, rtol=1e-12)
    np.testing.assert_allclose(batch.intensity[2], 3 * batch.intensity[0], rtol=1e-6)


def test_missing_wedge_is_nan(frame):
    """Near qip = 0 above the horizon no direction reaches (at incident 2 deg, qoop 4.5 nm^-1:
    |qip| >= 0.091 nm^-1 on the Ewald sphere): those cells are NaN, split or not; with
    splitting the cells beside the wedge are filled, without it some stay empty."""
    _, image, gaps, _, integ, _ = frame
    for split in (True, False):
        res = integ.integrate2d_grazing_incidence(
            image,
            npt_ip=200,
            npt_oop=100,
            ip_range=(-0.5, 0.5),
            oop_range=(4.5, 5.2),
            incident_angle=2.0,
            angle_unit="deg",
            mask=gaps,
            split_pixels=split,
        )
        centre = np.abs(res.inplane) < 0.08
        assert np.isnan(res.intensity[:, centre]).all()
        assert (res.count[:, centre] == 0).all()
        outside = np.isfinite(res.intensity[:, np.abs(res.inplane) > 0.2]).mean()
        assert outside > 0.95 if split else outside < 0.9


def test_units_and_angles(frame):
    cal, image, gaps, _, integ, _ = frame
    deg = integ.integrate2d_grazing_incidence(
        image, 50, 40, "qip_A^-1", "qoop_A^-1", incident_angle=2.0, angle_unit="deg", mask=gaps
    )
    rad = integ.integrate2d_grazing_incidence(
        image, 50, 40, "qip_nm^-1", "qoop_nm^-1", incident_angle=np.deg2rad(2.0), mask=gaps
    )
    np.testing.assert_allclose(deg.inplane * 10, rad.inplane, rtol=1e-9)
    np.testing.assert_allclose(deg.intensity, rad.intensity, rtol=1e-9)
    assert deg.radial_label == "qIP (A^-1)"
    with pytest.raises(ValueError, match="fiber unit"):
        integ.integrate2d_grazing_incidence(image, 10, 10, unit_ip="2th_deg")
    with pytest.raises(ValueError, match="sample_orientation"):
        integ.integrate2d_grazing_incidence(image, 10, 10, sample_orientation=9)
    with pytest.raises(ValueError, match="angle_unit"):
        integ.integrate2d_grazing_incidence(image, 10, 10, angle_unit="grad")


def test_every_engine_integrates_a_map(frame):
    """A map is an ordinary matrix: the numba engine, the device engine (NumPy as its array
    module, as in CI; CuPy on a GPU) and the SciPy reference give the same sums of a stack."""
    from gpusaxs.cpu_fallback.engine import ScipyEngine
    from gpusaxs.gpu_engine import DeviceEngine

    _, image, gaps, _, integ, _ = frame
    binning = GrazingBinning(
        80, 60, incident_angle=np.deg2rad(0.5), tilt_angle=np.deg2rad(3.0), sample_orientation=6
    )
    matrix, engine = integ.option_engine(grazing=binning, mask=gaps, correct_solid_angle=True)
    assert matrix.n_bins == 80 * 60 and engine.name == "numba"
    stack = np.stack([image, image + 1, image * 2]).astype(np.int32)
    ref = ScipyEngine(matrix).sums(stack, errors="poisson")
    for eng in (engine, DeviceEngine(matrix, xp=np, batch_size=2)):
        got = eng.sums(stack, errors="poisson")
        for name in ("signal", "norm", "variance"):
            np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["exitangles", "polar"])
def test_exit_angle_and_polar_maps_against_pyfai(frame, kind):
    """pyFAI's shortcuts integrate2d_exitangles / integrate2d_polar, without splitting: the
    same maps (angles in radians: pyFAI's shortcuts pass angle_unit on only as a keyword)."""
    _, image, gaps, mask, integ, fi = frame
    kwargs = dict(npt_ip=90, npt_oop=80, incident_angle=np.deg2rad(0.5), tilt_angle=np.deg2rad(3.0))
    theirs = getattr(fi, f"integrate2d_{kind}")(
        data=image, mask=mask, correctSolidAngle=False, method=NO_SPLIT, **kwargs
    )
    ours = getattr(integ, f"integrate2d_{kind}")(image, mask=gaps, split_pixels=False, **kwargs)
    for a, b in ((ours.inplane, theirs.inplane), (ours.outofplane, theirs.outofplane)):
        assert np.max(np.abs(a - b)) <= 0.01 * abs(b[1] - b[0])
    rel = relative(ours.intensity, theirs.intensity, theirs.count >= 30)
    assert np.median(rel) <= 1e-6 and np.percentile(rel, 95) <= 1e-6
    cut = getattr(integ, f"integrate1d_{kind}")(image, mask=gaps, **kwargs)
    assert cut.intensity.ndim == 1 and np.isfinite(cut.intensity).sum() > 10
