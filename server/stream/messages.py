"""Format-neutral stream messages: what :mod:`.v2` and :mod:`.v1` decode into.

The receiver parses a message's envelope (type, series, image id, the still-compressed
payload); decompression happens later, on the decode threads, through :meth:`Payload.decode`.
"""

from dataclasses import dataclass, field

from .codecs import DecodeError, decode_payload


class MalformedMessage(ValueError):
    """A message that cannot be understood; ``series_id``/``image_id`` when they were readable."""

    def __init__(self, reason, series_id=None, image_id=None):
        super().__init__(reason)
        self.reason = reason
        self.series_id = series_id
        self.image_id = image_id


@dataclass
class Payload:
    """A frame as received: compression ("bslz4", "lz4", "lz4-block", "none"), bytes-like data,
    shape (H, W), numpy dtype, bitshuffle element size (bslz4 only)."""

    compression: str
    data: object
    shape: tuple
    dtype: object
    elem_size: int | None = None

    def decode(self, out=None):
        """The frame as a (H, W) array (``out`` itself when decoded in place); DecodeError."""
        return decode_payload(
            self.compression, self.data, self.shape, self.dtype, self.elem_size, out
        )


@dataclass
class Start:
    """Start of a series.  Lengths in metres, energy in eV, wavelength in angstrom."""

    series_id: int
    unique_id: str = ""
    image_size: tuple | None = None  # (H, W) = (image_size_y, image_size_x)
    pixel_size_m: tuple | None = None  # (y, x) metres
    number_of_images: int | None = None
    beam_center: tuple | None = None  # (x, y) pixels
    distance_m: float | None = None
    wavelength_A: float | None = None
    energy_eV: float | None = None
    channels: list = field(default_factory=list)
    count_time_s: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Image:
    """One exposure: the first channel's payload (SAXS uses one threshold)."""

    series_id: int
    image_id: int
    payload: Payload
    unique_id: str = ""


@dataclass
class End:
    series_id: int
    unique_id: str = ""


__all__ = ["DecodeError", "End", "Image", "MalformedMessage", "Payload", "Start", "check_start"]


#: relative tolerance of a start message's pixel size against the calibration's
PIXEL_SIZE_RTOL = 1e-3


def check_start(start, integ):
    """None if the start message fits the integrator's calibration, else the reason (a str)."""
    cal = integ.calibration
    if start.image_size is not None and tuple(start.image_size) != tuple(integ.shape):
        return (
            f"image size {start.image_size[0]} x {start.image_size[1]} (rows x columns) "
            f"of the start message differs from the calibration's Imagesize "
            f"{integ.shape[0]} x {integ.shape[1]}"
        )
    if start.pixel_size_m is not None:
        want = [p * 1e-6 for p in cal.pixel_size_um]
        got = list(start.pixel_size_m)
        if any(abs(g - w) > PIXEL_SIZE_RTOL * w for g, w in zip(got, want, strict=False)):
            return (
                f"pixel size {got[0] * 1e6:g} x {got[1] * 1e6:g} um (y x) of the start "
                f"message differs from the calibration's PixelSizeMicroM "
                f"{want[0] * 1e6:g} x {want[1] * 1e6:g}"
            )
    return None
