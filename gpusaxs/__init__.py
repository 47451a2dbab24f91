"""gpusaxs: GPU-backed azimuthal integration of SAXS/WAXS detector frames."""
__version__ = "0.1.0"
