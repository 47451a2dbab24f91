"""gpusaxs.io.masks: fit2d .msk and image masks (True = pixel excluded)."""

import fabio
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpusaxs.errors import ImageReadError
from gpusaxs.io import fit2d_mask_bytes, read_image, read_mask, write_fit2d_mask
from gpusaxs.io.masks import FIT2D_MASK_MAGIC

REF_SHAPE = (1043, 981)  # rows x columns of AAA_integ.msk and buf1_00000.tif


@pytest.fixture(scope="module")
def ref_mask(reference_dir):
    return read_mask(reference_dir / "AAA_integ.msk")


# ---------------------------------------------------------------- the beamline mask


def test_reference_mask_shape_and_fraction(ref_mask, record_property):
    assert ref_mask.shape == REF_SHAPE
    assert ref_mask.dtype == np.bool_
    fraction = float(ref_mask.mean())
    record_property("masked_fraction", fraction)
    print(
        f"AAA_integ.msk: {ref_mask.sum()} of {ref_mask.size} pixels masked ({100 * fraction:.2f} %)"
    )
    assert 0.05 < fraction < 0.9  # neither trivial nor all-masked
    assert ref_mask.sum() == 356788


def test_reference_mask_covers_negative_pixels(reference_dir, ref_mask):
    """Module gaps (-1) and bad pixels (-2) of the frame all lie under the mask."""
    img = read_image(reference_dir / "buf1_00000.tif")
    negative = img < 0
    assert negative.sum() > 10000  # the frame really has gaps
    assert not (negative & ~ref_mask).any()
    # and the orientation matters: without the vertical flip the gaps are not covered
    assert (negative & ~ref_mask[::-1]).sum() > 0


def test_reference_mask_against_fabio(reference_dir, ref_mask):
    """fabio returns rows in file order (bottom row first); ours is top-down."""
    fab = fabio.open(str(reference_dir / "AAA_integ.msk")).data
    assert fab.shape == REF_SHAPE
    np.testing.assert_array_equal(ref_mask, np.flipud(fab != 0))


def test_reference_mask_rewritten_byte_exact(reference_dir, ref_mask, tmp_path):
    raw = (reference_dir / "AAA_integ.msk").read_bytes()
    out = tmp_path / "copy.msk"
    write_fit2d_mask(out, ref_mask)
    written = out.read_bytes()
    # the beamline file carries one extra trailing byte after the bit data
    assert len(written) == 1024 + 1043 * 31 * 4
    assert raw[: len(written)] == written
    np.testing.assert_array_equal(read_mask(out, shape=REF_SHAPE), ref_mask)


def test_reference_mask_shape_check(reference_dir):
    path = reference_dir / "AAA_integ.msk"
    assert read_mask(path, shape=REF_SHAPE).shape == REF_SHAPE
    with pytest.raises(ImageReadError, match="1043x981.*expected 981x1043"):
        read_mask(path, shape=(981, 1043))


# ---------------------------------------------------------------- writer format and round trip


def test_header_layout(tmp_path):
    mask = np.zeros((5, 40), bool)
    mask[0, 0] = True  # top-left pixel: stored in the last row, bit 0 of its first word
    mask[4, 33] = True  # bottom row, column 33: first stored row, bit 1 of its second word
    raw = fit2d_mask_bytes(mask)
    assert raw[:16] == FIT2D_MASK_MAGIC
    assert np.frombuffer(raw[16:28], "<i4").tolist() == [40, 5, 1]
    assert raw[28:1024] == bytes(996)
    assert len(raw) == 1024 + 5 * 2 * 4  # 40 columns -> two 32-bit words per row
    words = np.frombuffer(raw[1024:], "<u4").reshape(5, 2)
    assert words[0].tolist() == [0, 1 << 1]
    assert words[4].tolist() == [1, 0]
    assert words[1:4].sum() == 0


@pytest.fixture(scope="module")
def rt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("masks")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), width=st.sampled_from([981, 33, 32, 31, 1, 64, 65]))
def test_roundtrip_random_masks(rt_dir, data, width):
    height = data.draw(st.integers(1, 12 if width > 100 else 40), label="height")
    mask = data.draw(hnp.arrays(np.bool_, (height, width)), label="mask")
    path = rt_dir / "rt.msk"
    write_fit2d_mask(path, mask)
    back = read_mask(path, shape=(height, width))
    assert back.dtype == np.bool_
    np.testing.assert_array_equal(back, mask)
    # independent reader: fabio, in its bottom-row-first order
    np.testing.assert_array_equal(np.flipud(fabio.open(str(path)).data != 0), mask)
    assert [p.name for p in rt_dir.iterdir()] == ["rt.msk"]  # no temporary left over


def test_write_accepts_nonzero_ints_and_rejects_bad_shapes(tmp_path):
    ints = np.array([[0, 5, -1], [2, 0, 0]])
    write_fit2d_mask(tmp_path / "i.msk", ints)
    np.testing.assert_array_equal(read_mask(tmp_path / "i.msk"), ints != 0)
    for bad in (np.zeros(5, bool), np.zeros((0, 3), bool), np.zeros((2, 2, 2), bool)):
        with pytest.raises(ValueError):
            write_fit2d_mask(tmp_path / "bad.msk", bad)
    assert not (tmp_path / "bad.msk").exists()


# ---------------------------------------------------------------- bad files


def _msk(tmp_path, raw, name="bad.msk"):
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def test_truncated_bit_data(tmp_path):
    raw = fit2d_mask_bytes(np.ones((10, 33), bool))  # 2 words per row -> 80 bytes of bits
    path = _msk(tmp_path, raw[:-7])
    with pytest.raises(
        ImageReadError, match=r"truncated: expected 80 bytes of bit data, got 73"
    ) as ei:
        read_mask(path)
    assert ei.value.path == str(path)
    assert "\n" not in str(ei.value)


def test_truncated_reference_mask(reference_dir, tmp_path):
    raw = (reference_dir / "AAA_integ.msk").read_bytes()
    path = _msk(tmp_path, raw[: len(raw) // 2])
    with pytest.raises(ImageReadError, match="truncated: expected 129332 bytes of bit data"):
        read_mask(path)


def test_truncated_header(tmp_path):
    raw = fit2d_mask_bytes(np.ones((3, 3), bool))
    with pytest.raises(ImageReadError, match="truncated: expected a 1024-byte header"):
        read_mask(_msk(tmp_path, raw[:500]))


@pytest.mark.parametrize("raw", [b"", b"MASK" + bytes(2000), b"\x00" * 2000])
def test_bad_magic(tmp_path, raw):
    with pytest.raises(ImageReadError, match="not a fit2d mask: bad magic"):
        read_mask(_msk(tmp_path, raw))


@pytest.mark.parametrize("width,height", [(0, 5), (5, 0), (-3, 5), (5, 1 << 30)])
def test_bad_dimensions(tmp_path, width, height):
    raw = bytearray(fit2d_mask_bytes(np.ones((2, 2), bool)))
    raw[16:24] = np.array([width, height], "<i4").tobytes()
    with pytest.raises(ImageReadError, match="invalid size"):
        read_mask(_msk(tmp_path, bytes(raw)))


def test_missing_mask(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_mask(tmp_path / "nope.msk")
    with pytest.raises(ImageReadError, match="no such file"):
        read_mask(tmp_path / "nope.tif")


# ---------------------------------------------------------------- image masks


@pytest.mark.parametrize("fmt", ["tif", "edf", "png"])
def test_image_mask_nonzero_is_masked(tmp_path, fmt):
    data = np.zeros((7, 9), np.uint8)
    data[1, 2] = 1
    data[6, 8] = 255
    path = tmp_path / f"m.{fmt}"
    if fmt == "tif":
        tifffile.imwrite(path, data)
    elif fmt == "edf":
        fabio.edfimage.EdfImage(data=data).write(str(path))
    else:
        from PIL import Image

        Image.fromarray(data).save(path)
    mask = read_mask(path, shape=(7, 9))
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, data != 0)
    with pytest.raises(ImageReadError, match="expected 9x7"):
        read_mask(path, shape=(9, 7))


def test_fit2d_mask_recognised_by_magic_without_suffix(tmp_path):
    mask = np.eye(6, 13, dtype=bool)
    path = tmp_path / "mask.bin"
    path.write_bytes(fit2d_mask_bytes(mask))
    np.testing.assert_array_equal(read_mask(path), mask)
