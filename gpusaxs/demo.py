"""Demo data: a synthetic silver-behenate frame on a PILATUS 1M.

:func:`make_demo_data` writes a calibration, a fit2d mask and a few Poisson-noisy frames with
the PILATUS 1M module gaps (-1) and some bad pixels (-2); the command ``gpusaxs-demo``
(clients/demo.py) integrates them and checks the rings, saxsdetsim streams such frames.
"""

import io
import json
from pathlib import Path

import numpy as np

from .calibration_model import Calibration
from .geometry import polarization_factor, q_map
from .io.atomic import atomic_save_bytes, atomic_write
from .io.masks import write_fit2d_mask

#: Silver behenate lamellar spacing (nm): ring n at q = 2 pi n / d.
AGBH_D_NM = 5.8380
#: PILATUS 1M: 2 x 5 modules of 487 x 195 pixels, gaps of 7 columns and 17 rows.
PILATUS_1M_SHAPE = (1043, 981)
MODULE = (195, 487)
GAP = (17, 7)

DEMO_CALIBRATION = {
    "Title": "gpusaxs demo: synthetic silver behenate on a PILATUS 1M",
    "PixelPerRadialElement": 1,
    "Imagesize": list(PILATUS_1M_SHAPE),
    "Tilt": {"TiltRotDeg": 73.569, "TiltAngleDeg": -0.56},
    "MaskFile": "mask.msk",
    "Oversampling": 3,
    "Wavelength": 1.54,
    "BeamCenter": [808.37, 387.772],
    "DedectorDistanceMM": 1031.657,
    "PixelSizeMicroM": [172.0, 172.0],
    "PolarizationCorrection": {"Fraction": 0.95, "Angle": 0.0},
}


def pilatus_gaps(shape=PILATUS_1M_SHAPE):
    """Bool (H, W), True in the inter-module gaps of a PILATUS (modules 195 x 487 px)."""
    gaps = np.ones(shape, dtype=bool)
    for r0 in range(0, shape[0], MODULE[0] + GAP[0]):
        for c0 in range(0, shape[1], MODULE[1] + GAP[1]):
            gaps[r0 : r0 + MODULE[0], c0 : c0 + MODULE[1]] = False
    return gaps


def calibrant_profile(q):
    """Expected counts per pixel of the demo at q (nm^-1): AgBh rings on a smooth background."""
    q = np.asarray(q)
    background = 40.0 / (1.0 + (q / 0.4) ** 2) + 2.0
    rings = np.zeros_like(q)
    for n in range(1, 8):
        rings += (600.0 / n) * np.exp(-0.5 * ((q - 2 * np.pi * n / AGBH_D_NM) / 0.012) ** 2)
    return background + rings


def synthetic_frame(cal, rng, n_bad=200):
    """One int32 frame: Poisson counts of the profile (polarized as ``cal`` says), gaps -1,
    bad -2."""
    expected = calibrant_profile(q_map(cal)) * polarization_factor(cal)
    frame = rng.poisson(expected).astype(np.int32)
    frame[pilatus_gaps(frame.shape)] = -1
    bad = rng.integers(0, frame.size, n_bad)
    frame.ravel()[bad] = -2
    return frame


def demo_mask(shape, beam_row_col, beamstop_px=25):
    """Mask (True = excluded): module gaps and a round beamstop at the beam centre."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    beamstop = (rows + 0.5 - beam_row_col[0]) ** 2 + (
        cols + 0.5 - beam_row_col[1]
    ) ** 2 < beamstop_px**2
    return pilatus_gaps(shape) | beamstop


def make_demo_data(folder, n_frames=20, seed=0):
    """Write calibration.json, mask.msk and frames/frame_NNNNN.tif into ``folder``."""
    import tifffile

    folder = Path(folder)
    frames_dir = folder / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "calibration.json", "w") as fh:
        json.dump(DEMO_CALIBRATION, fh, indent=2)
    height = DEMO_CALIBRATION["Imagesize"][0]
    y, x = DEMO_CALIBRATION["BeamCenter"]
    write_fit2d_mask(folder / "mask.msk", demo_mask(PILATUS_1M_SHAPE, (height - y, x)))
    cal = Calibration.from_dict(DEMO_CALIBRATION, base_dir=folder)
    rng = np.random.default_rng(seed)
    for i in range(n_frames):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, synthetic_frame(cal, rng))
        atomic_save_bytes(frames_dir / f"frame_{i:05d}.tif", buffer.getvalue())
    return folder / "calibration.json", frames_dir
