"""Geometry against pyFAI: scattering angle, q and polarization (sections 4.3, 4.4)."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusaxs import geometry
from tests.helpers import pyfai_integrator

pytest.importorskip("pyFAI")


def make_cal(height, width, y, x, dist, tilt, rot, px_y=172.0, px_x=172.0, pol=None):
    return SimpleNamespace(
        imagesize=(height, width),
        beam_center=(y, x),
        distance_mm=dist,
        tilt_angle_deg=tilt,
        tilt_rot_deg=rot,
        pixel_size_um=(px_y, px_x),
        wavelength_A=1.54,
        polarization=pol,
    )


geometries = st.builds(
    make_cal,
    height=st.integers(16, 96),
    width=st.integers(16, 96),
    y=st.floats(-300, 400),
    x=st.floats(-300, 400),  # on or off the detector
    dist=st.floats(50, 5000),
    tilt=st.floats(-45, 45),
    rot=st.floats(-360, 360),
    px_y=st.floats(50, 200),
    px_x=st.floats(50, 200),
)


@pytest.mark.usefixtures("frozen_gc")  # pyFAI collects garbage per geometry
@settings(max_examples=60, deadline=None)
@given(geometries)
def test_two_theta_matches_pyfai_for_random_tilted_geometries(cal):
    ref = pyfai_integrator(cal).center_array(cal.imagesize, unit="2th_rad")
    assert np.max(np.abs(geometry.two_theta(cal) - ref)) < 1e-9


def test_two_theta_matches_pyfai_on_the_reference_detector():
    cal = make_cal(1043, 981, 808.37, 387.772, 1031.657, -10.0, 73.569)
    ref = pyfai_integrator(cal).center_array(cal.imagesize, unit="2th_rad")
    assert np.max(np.abs(geometry.two_theta(cal) - ref)) < 1e-9


def test_q_matches_pyfai_in_inverse_nanometres():
    cal = make_cal(200, 150, 120.0, 60.0, 800.0, 5.0, 30.0)
    ref = pyfai_integrator(cal).center_array(cal.imagesize, unit="q_nm^-1")
    np.testing.assert_allclose(geometry.q_map(cal), ref, rtol=1e-9)


def test_oversampled_angles_average_to_more_than_centre_spread():
    cal = make_cal(40, 30, 20.0, 15.0, 500.0, 3.0, 10.0)
    fine = geometry.two_theta(cal, oversampling=3)
    assert fine.shape == (120, 90)
    # the centre sub-pixel of an odd oversampling is the pixel centre
    np.testing.assert_allclose(fine[1::3, 1::3], geometry.two_theta(cal), atol=1e-15)


@pytest.mark.parametrize("fraction", [0.5, 0.95, 1.0, 0.2])
def test_polarization_matches_pyfai_on_untilted_detector(fraction):
    cal = make_cal(300, 280, 150.3, 120.7, 120.0, 0.0, 0.0, pol=(fraction, 0.0))
    ai = pyfai_integrator(cal)
    ref = ai.polarization(cal.imagesize, factor=2 * fraction - 1)
    k = geometry.polarization_factor(cal)
    assert np.max(np.abs(k - ref)) < 1e-6
    assert k.min() < 0.99  # the test geometry reaches angles where K matters


def test_polarization_angle_rotates_the_pattern():
    """Angle = 90 deg with fraction P is the same as Angle = 0 with fraction 1 - P."""
    cal = make_cal(100, 90, 50.0, 45.0, 100.0, 0.0, 0.0)
    tth, phi = geometry.two_theta_and_azimuth(cal)
    np.testing.assert_allclose(
        geometry.polarization_of(tth, phi, 0.9, 90.0),
        geometry.polarization_of(tth, phi, 0.1, 0.0),
        atol=1e-12,
    )


def test_azimuth_is_clockwise_from_twelve_o_clock():
    # beam in the middle of a 101 x 101 image, untilted
    cal = make_cal(101, 101, 50.5, 50.5, 100.0, 0.0, 0.0)
    phi = geometry.azimuth(cal)
    assert phi[0, 50] == pytest.approx(0.0)  # straight up (row 0 is the top)
    assert phi[50, 100] == pytest.approx(np.pi / 2)  # right: 3 o'clock
    assert abs(phi[100, 50]) == pytest.approx(np.pi)  # down
    assert phi[50, 0] == pytest.approx(-np.pi / 2)  # left: 9 o'clock


@settings(max_examples=30, deadline=None)
@given(geometries)
def test_calc_theta_of_section_6_agrees_with_two_theta(cal):
    """calc_theta(r, phi, d, tilt, tilt_dir) with phi anticlockwise from +X (Y up) and
    tilt_dir = 90 deg - TiltRotDeg gives the same angles (documented in its docstring)."""
    dx, dy = geometry.pixel_offsets_mm(cal)
    r, phi = np.hypot(dx, dy), np.arctan2(dy, dx)
    got = geometry.calc_theta(
        r,
        phi,
        cal.distance_mm,
        np.deg2rad(cal.tilt_angle_deg),
        np.pi / 2 - np.deg2rad(cal.tilt_rot_deg),
    )
    assert np.max(np.abs(got - geometry.two_theta(cal))) < 1e-9


@settings(max_examples=8, deadline=None)
@given(geometries)
def test_solid_angle_and_chi_match_pyfai(cal):
    """pyFAI's solid angle cos(incidence)^3 and its chi convention (gpusaxs.units)."""
    ai = pyfai_integrator(cal)
    np.testing.assert_allclose(
        geometry.solid_angle(cal), ai.solidAngleArray(cal.imagesize), rtol=1e-6
    )
    diff = np.angle(np.exp(1j * (geometry.chi(cal) - ai.chiArray(cal.imagesize))))
    # pyFAI computes the position in float32 from terms of the size of the distance D, so its
    # angle is off by up to about eps32 x D / r at r from the beam (seen: 1.4e-4 rad at 0.13 mm
    # for D = 1622 mm; 0.9 x that bound at worst over 300 random geometries): allowed 4 x it.
    # A wrong convention is off by a quarter or half turn.
    dx, dy = geometry.pixel_offsets_mm(cal)
    r_mm = np.hypot(dx, dy)
    allowed = 1e-5 + 4 * 2.0**-24 * cal.distance_mm / np.maximum(r_mm, 1e-9)
    assert np.all(np.abs(diff) < allowed)
    phi = geometry.azimuth(cal)
    np.testing.assert_allclose(np.cos(geometry.chi(cal)), np.cos(phi - np.pi / 2), atol=1e-12)
