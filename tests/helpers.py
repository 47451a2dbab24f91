"""Helpers shared by the core tests: pyFAI set up with our geometry mapping."""

import logging
import warnings

import numpy as np
import pytest


def pyfai_integrator(cal, fiber=False):
    """A pyFAI AzimuthalIntegrator reproducing ``cal``'s geometry (reference README mapping);
    ``fiber``: a FiberIntegrator (grazing incidence) instead."""
    logging.getLogger("pyFAI").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pyFAI")
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    from pyFAI.integrator.fiber import FiberIntegrator

    if fiber:
        AzimuthalIntegrator = FiberIntegrator  # noqa: N806

    height, width = cal.imagesize
    px_y, px_x = cal.pixel_size_um
    det = Detector(pixel1=px_y * 1e-6, pixel2=px_x * 1e-6, max_shape=(height, width))
    ai = AzimuthalIntegrator(detector=det, wavelength=cal.wavelength_A * 1e-10)
    ai.setFit2D(
        cal.distance_mm,
        centerX=cal.beam_center[1],
        centerY=height - cal.beam_center[0],
        tilt=cal.tilt_angle_deg,
        tiltPlanRotation=-cal.tilt_rot_deg,
        pixelX=px_x,
        pixelY=px_y,
    )
    return ai


def calibration_with_mask(folder, mask=None, **changes):
    """A Calibration with the reference geometry and ``mask`` (default: nothing masked) written
    as a fit2d .msk into ``folder``; ``changes`` override fields of the flat form."""
    from gpusaxs import Calibration
    from gpusaxs.io.masks import write_fit2d_mask

    d = flat_calibration(**changes)
    if mask is None:
        mask = np.zeros(d["Imagesize"], dtype=bool)
    write_fit2d_mask(f"{folder}/mask.msk", mask)
    d["MaskFile"] = "mask.msk"
    return Calibration.from_dict(d, base_dir=folder)


def flat_calibration(**changes):
    """A flat calibration dict (the reference geometry), with changes applied."""
    d = {
        "PixelPerRadialElement": 1,
        "Imagesize": [1043, 981],
        "Tilt": {"TiltRotDeg": 73.569, "TiltAngleDeg": -0.56},
        "MaskFile": "mask.msk",
        "Oversampling": 3,
        "Wavelength": 1.54,
        "BeamCenter": [808.37, 387.772],
        "DedectorDistanceMM": 1031.657,
        "PixelSizeMicroM": [172.0, 172.0],
    }
    d.update(changes)
    return d


def fit2d_edges(chi_q):
    """Bin edges around fit2d's uniform bin centres."""
    dq = (chi_q[-1] - chi_q[0]) / (len(chi_q) - 1)
    return np.concatenate([chi_q - dq / 2, [chi_q[-1] + dq / 2]])


def tilted_synthetic_frame(folder):
    """(calibration, frame, dark, flat) of a real-size tilted geometry (PILATUS 1M, tilt 12
    deg, 400 mm, Oversampling 1): a Poisson frame of a smooth curve with a ring, drawn through
    a random flat (0.8-1.2), the solid angle and a dark (0-5 counts), with a module gap (-1)
    and scattered bad pixels (-2)."""
    from gpusaxs import geometry

    cal = calibration_with_mask(
        folder,
        Oversampling=1,
        DedectorDistanceMM=400.0,
        Tilt={"TiltAngleDeg": 12.0, "TiltRotDeg": 40.0},
        BeamCenter=[600.3, 450.7],
    )
    rng = np.random.default_rng(12)
    q = geometry.q_map(cal)
    ideal = 2000.0 * np.exp(-q / 0.8) + 300.0 * np.exp(-(((q - 2.0) / 0.05) ** 2)) + 20.0
    flat = rng.uniform(0.8, 1.2, cal.imagesize)
    dark = rng.uniform(0.0, 5.0, cal.imagesize)
    image = rng.poisson(ideal * flat * geometry.solid_angle(cal) + dark).astype(np.int32)
    image[:, 487:494] = -1  # a PILATUS module gap
    image[rng.random(cal.imagesize) < 1e-3] = -2
    return cal, image, dark, flat


def nxvalidate(path):
    """Validate a NeXus file with nexusformat's ``nxvalidate`` (run as a process, warnings on).

    Returns ``(errors, warnings, text)``: the counts the validator prints in its summary and
    its whole output, colour codes removed.
    """
    import re
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", "from nexusformat.scripts.nxvalidate import main; main()"]
        + ["-w", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout + r.stderr)
    errors = re.search(r"Total number of errors: (\d+)", text)
    warns = re.search(r"Total number of warnings: (\d+)", text)
    if errors is None or warns is None:
        raise AssertionError(f"nxvalidate gave no summary for {path}:\n{text}")
    return int(errors.group(1)), int(warns.group(1)), text


def run_saxsdog(args, cwd, timeout=300):
    """saxsdog as a user runs it: its own process, this source tree's package, text output."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run(
        [sys.executable, "-m", "gpusaxs.clients.saxsdog", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


#: the pyFAI whose FiberIntegrator is the grazing-incidence reference (issue 28): before it,
#: its results name their axes otherwise and its fiber units differ
FIBER_REFERENCE_PYFAI = (2026, 9)


def require_fiber_reference():
    """Skip unless the installed pyFAI's FiberIntegrator is the reference one (2026.9 on)."""
    import pyFAI

    version = tuple(int(part) for part in pyFAI.version.split(".")[:2])
    if version < FIBER_REFERENCE_PYFAI:
        pytest.skip(f"pyFAI {pyFAI.version}: the FiberIntegrator reference is pyFAI 2026.9")
