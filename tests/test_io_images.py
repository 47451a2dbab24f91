"""gpusaxs.io.images: read_image, image_complete, is_image_file."""

import logging

import fabio
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusaxs.errors import ImageReadError
from gpusaxs.io import IMAGE_SUFFIXES, image_complete, is_image_file, read_image

FRAME = (np.arange(37 * 23, dtype=np.int32).reshape(37, 23) * 7919 % 100003) - 2


def _write(path, data, fmt):
    if fmt == "tif":
        tifffile.imwrite(path, data)
    elif fmt == "cbf":
        fabio.cbfimage.CbfImage(data=data).write(str(path))
    elif fmt == "edf":
        fabio.edfimage.EdfImage(data=data).write(str(path))
    else:
        raise ValueError(fmt)
    return path


def _assert_one_line(exc_info, path):
    msg = str(exc_info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))
    assert exc_info.value.path == str(path)


# ---------------------------------------------------------------- reference frame


def test_reference_tiff_keeps_int32(reference_dir):
    img = read_image(reference_dir / "buf1_00000.tif")
    assert img.shape == (1043, 981)
    assert img.dtype == np.int32
    assert img.flags.c_contiguous
    assert (img == -1).any() and (img == -2).any()  # module gaps and bad pixels survive
    assert img.max() > 0


def test_reference_tiff_shape_check(reference_dir):
    path = reference_dir / "buf1_00000.tif"
    assert read_image(path, shape=(1043, 981)).shape == (1043, 981)
    with pytest.raises(ImageReadError, match=r"1043x981 .*expected 981x1043") as ei:
        read_image(path, shape=(981, 1043))
    _assert_one_line(ei, path)
    assert image_complete(path)
    assert image_complete(path, shape=(1043, 981))
    assert not image_complete(path, shape=(1000, 1000))


# ---------------------------------------------------------------- formats and dtypes


@pytest.mark.parametrize("fmt", ["tif", "cbf", "edf"])
def test_roundtrip_int32_keeps_dtype_and_values(tmp_path, fmt):
    path = _write(tmp_path / f"frame.{fmt}", FRAME, fmt)
    img = read_image(path, shape=FRAME.shape)
    assert img.dtype == np.int32
    np.testing.assert_array_equal(img, FRAME)
    assert image_complete(path)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.float32])
@pytest.mark.parametrize("fmt", ["tif", "edf"])
def test_other_dtypes_not_converted(tmp_path, fmt, dtype):
    data = (np.abs(FRAME) % 60000).astype(dtype)
    img = read_image(_write(tmp_path / f"f.{fmt}", data, fmt))
    assert img.dtype == dtype
    np.testing.assert_array_equal(img, data)


def test_big_endian_tiff_returned_in_native_order(tmp_path):
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, FRAME, byteorder=">")
    img = read_image(path)
    assert img.dtype == np.int32 and img.dtype.isnative
    np.testing.assert_array_equal(img, FRAME)


def test_png_through_pillow(tmp_path):
    from PIL import Image

    data = (FRAME % 256).astype(np.uint8)
    Image.fromarray(data).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_image(tmp_path / "m.png"), data)


# ---------------------------------------------------------------- failures


def test_missing_file(tmp_path):
    path = tmp_path / "nope.tif"
    with pytest.raises(ImageReadError, match="no such file") as ei:
        read_image(path)
    _assert_one_line(ei, path)
    assert not image_complete(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.cbf"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty file"):
        read_image(path)
    assert not image_complete(path)


def test_directory_is_not_an_image(tmp_path):
    (tmp_path / "d.tif").mkdir()
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path / "d.tif")


@pytest.mark.parametrize("suffix", [".tif", ".cbf", ".edf", ".img", ".dat"])
def test_not_an_image(tmp_path, suffix):
    path = tmp_path / f"notes{suffix}"
    path.write_text("this is a text file\nwith two lines\n")
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    _assert_one_line(ei, path)
    assert not image_complete(path)


def test_multi_page_tiff_rejected(tmp_path):
    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(FRAME)
        tw.write(FRAME)
    with pytest.raises(ImageReadError, match="multi-frame TIFF \\(2 pages\\)") as ei:
        read_image(path)
    _assert_one_line(ei, path)


def test_3d_tiff_rejected(tmp_path):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    with pytest.raises(ImageReadError, match="expected a 2D frame.*\\(8, 9, 3\\)"):
        read_image(path)


def test_multi_frame_edf_rejected(tmp_path):
    path = tmp_path / "two.edf"
    img = fabio.edfimage.EdfImage(data=FRAME)
    img.append_frame(data=FRAME + 1)
    img.write(str(path))
    with pytest.raises(ImageReadError, match="multi-frame file \\(2 frames\\)"):
        read_image(path)


@pytest.mark.parametrize("fmt", ["tif", "cbf", "edf"])
def test_truncated_file_rejected(tmp_path, fmt, caplog):
    full = _write(tmp_path / f"full.{fmt}", FRAME, fmt).read_bytes()
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(full[: len(full) * 2 // 3])
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ImageReadError) as ei:
            read_image(path)
    _assert_one_line(ei, path)
    assert not image_complete(path)
    # fabio's "incomplete data" complaints become our exception, not log noise
    assert not [
        r for r in caplog.records if r.name.startswith("fabio") and r.levelno >= logging.ERROR
    ]


def test_cbf_cut_before_binary_data_does_not_hang(tmp_path):
    """fabio loops forever on this file; read_image must refuse it up front."""
    full = _write(tmp_path / "full.cbf", FRAME, "cbf").read_bytes()
    start = full.index(b"\x0c\x1a\x04\xd5")
    assert full.index(b"--CIF-BINARY-FORMAT-SECTION--") < start
    path = tmp_path / "cut.cbf"
    path.write_bytes(full[: start - 1])
    with pytest.raises(ImageReadError, match="no binary data section"):
        read_image(path)
    assert not image_complete(path)


def test_gzipped_cbf(tmp_path):
    import gzip

    data = np.random.default_rng(3).integers(-2, 2**30, (40, 30)).astype(np.int32)
    _write(tmp_path / "raw.cbf", data, "cbf")
    packed = gzip.compress((tmp_path / "raw.cbf").read_bytes())
    (tmp_path / "ok.cbf.gz").write_bytes(packed)
    np.testing.assert_array_equal(read_image(tmp_path / "ok.cbf.gz"), data)
    (tmp_path / "cut.cbf.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ImageReadError, match="cannot decompress"):
        read_image(tmp_path / "cut.cbf.gz")


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("fmt", ["tif", "cbf", "edf"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frac=st.floats(0.0, 1.0))
def test_any_truncation_raises_or_gives_exact_data(fuzz_dir, fmt, frac):
    """A file cut anywhere (a detector still writing it) never yields wrong pixels."""
    full = _write(fuzz_dir / f"full.{fmt}", FRAME, fmt).read_bytes()
    cut = int(frac * len(full))
    path = fuzz_dir / f"cut.{fmt}"
    path.write_bytes(full[:cut])
    try:
        img = read_image(path)
    except ImageReadError as exc:
        assert "\n" not in str(exc)
        assert not image_complete(path)
    else:
        np.testing.assert_array_equal(img, FRAME)
        assert image_complete(path)


@pytest.mark.parametrize("suffix", [".tif", ".cbf", ".edf"])
@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=1, max_size=3000))
def test_garbage_bytes_raise_image_read_error(fuzz_dir, suffix, data):
    path = fuzz_dir / f"garbage{suffix}"
    path.write_bytes(data)
    try:
        img = read_image(path)
    except ImageReadError as exc:
        assert "\n" not in str(exc)
    else:  # pragma: no cover - only if the bytes happen to form a valid image
        assert img.ndim == 2


# ---------------------------------------------------------------- suffixes


@pytest.mark.parametrize(
    "name,expected",
    [
        ("a.tif", True),
        ("a.TIFF", True),
        ("/x/y/buf_00001.cbf", True),
        ("a.edf", True),
        ("a.img", True),
        ("a.mccd", True),
        ("a.h5", False),
        ("a.chi", False),
        ("a.msk", False),
        ("a.tif.tmp", False),
        (".a.tif.1234abcd.tmp", False),
        (".hidden.tif", False),
        ("tif", False),
    ],
)
def test_is_image_file(name, expected):
    assert is_image_file(name) is expected


def test_image_suffixes():
    assert set(IMAGE_SUFFIXES) == {".tif", ".tiff", ".cbf", ".edf", ".img", ".mccd"}


@pytest.mark.parametrize("dtype", ["<i4", ">i4", "<u2", "<u4", "<f4", ">f8", "<i2", "u1"])
@pytest.mark.parametrize(
    "layout", [{}, {"rowsperstrip": 5}, {"compression": "zlib"}, {"tile": (16, 16)}]
)
def test_plain_tiff_fast_path_equals_tifffile(tmp_path, dtype, layout):
    """The struct-parsed fast path takes plain files only, and gives tifffile's pixels."""
    import tifffile

    from gpusaxs.io.image_files import _read_tiff_plain

    rng = np.random.default_rng(0)
    data = (rng.random((37, 53)) * 200 - 20).astype(dtype)
    path = tmp_path / "frame.tif"
    tifffile.imwrite(path, data, **layout)
    got = read_image(path)
    np.testing.assert_array_equal(got, tifffile.imread(path))
    assert got.dtype.isnative
    plain = _read_tiff_plain(path)
    assert (plain is not None) == (not layout or "rowsperstrip" in layout)


def test_plain_tiff_fast_path_reads_the_reference_frame(reference_dir):
    import tifffile

    from gpusaxs.io.image_files import _read_tiff_plain

    path = reference_dir / "buf1_00000.tif"
    fast = _read_tiff_plain(path)
    assert fast is not None
    np.testing.assert_array_equal(fast, tifffile.imread(path))


# ---------------------------------------------------------------- decompression bombs (issue 15)


def _bomb_tiff(path, height, width, rows_per_strip=16):
    """A zlib TIFF declaring height x width int32 pixels whose strips all point at ONE small
    compressed block of zeros: a few kB on disk, height*width*4 bytes once decoded."""
    import struct
    import zlib

    blob = zlib.compress(bytes(rows_per_strip * width * 4), 9)
    n = -(-height // rows_per_strip)
    tags = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 32),
        (259, 3, 1, 8),
        (262, 3, 1, 1),
        (273, 4, n, None),
        (277, 3, 1, 1),
        (278, 4, 1, rows_per_strip),
        (279, 4, n, None),
        (339, 3, 1, 2),
    ]
    ifd_at = 8
    arrays_at = ifd_at + 2 + 12 * len(tags) + 4
    offsets_at, counts_at = arrays_at, arrays_at + 4 * n
    blob_at = counts_at + 4 * n
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", len(tags)))
    for tag, typ, count, value in tags:
        if tag == 273:
            value = offsets_at
        elif tag == 279:
            value = counts_at
        fmt = "<HHIHH" if typ == 3 and count == 1 else "<HHII"
        out += (
            struct.pack(fmt, tag, typ, count, value, 0)
            if fmt == "<HHIHH"
            else struct.pack(fmt, tag, typ, count, value)
        )
    out += struct.pack("<I", 0)
    out += struct.pack(f"<{n}I", *([blob_at] * n)) + struct.pack(f"<{n}I", *([len(blob)] * n))
    out += blob
    path.write_bytes(bytes(out))
    return path


def _bomb_edf(path, height, width):
    """An EDF header declaring height x width int32 pixels, followed by 1 kB of data."""
    head = (
        f"{{\nHeaderID = EH:000001:000000:000000 ;\nImage = 1 ;\nByteOrder = LowByteFirst ;\n"
        f"DataType = SignedInteger ;\nDim_1 = {width} ;\nDim_2 = {height} ;\n"
        f"Size = {height * width * 4} ;\n"
    )
    head = head.ljust(1022) + "}\n"
    path.write_bytes(head.encode() + bytes(1024))
    return path


def _rejected(path, **kw):
    """(exception, seconds, peak traced bytes) of reading ``path``."""
    import time
    import tracemalloc

    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ImageReadError) as ei:
            read_image(path, **kw)
        return ei.value, time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_tiff_bomb_rejected_before_decoding(tmp_path):
    path = _bomb_tiff(tmp_path / "bomb.tif", 20000, 20000)
    assert path.stat().st_size < 100_000  # declares 1.6 GB of pixels
    exc, seconds, peak = _rejected(path, shape=(1043, 981))
    assert "20000x20000" in str(exc) and "expected 1043x981" in str(exc)
    assert "not decoded" in str(exc)
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MB allocated while rejecting"
    # without an expected shape the pixel bound applies
    exc, _, peak = _rejected(path)
    assert "400,000,000 pixels" in str(exc) and "limit" in str(exc)
    assert peak < 20 * 2**20
    assert not image_complete(path, shape=(1043, 981))


def test_tiff_bomb_shape_checked_on_a_small_frame(tmp_path):
    """The header check passes a frame of the expected shape, which then decodes normally."""
    path = _bomb_tiff(tmp_path / "ok.tif", 40, 30, rows_per_strip=8)
    img = read_image(path, shape=(40, 30))
    assert img.shape == (40, 30) and img.dtype == np.int32 and not img.any()
    with pytest.raises(ImageReadError, match="declared in the header"):
        read_image(path, shape=(30, 40))


def test_edf_bomb_rejected_before_decoding(tmp_path):
    path = _bomb_edf(tmp_path / "bomb.edf", 20000, 20000)
    exc, seconds, peak = _rejected(path, shape=(1043, 981))
    assert "20000x20000" in str(exc) and "not decoded" in str(exc)
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MB allocated while rejecting"


def test_declared_frame_of_real_cbf_and_edf(tmp_path):
    from gpusaxs.io.images import declared_frame

    for fmt in ("cbf", "edf"):
        path = _write(tmp_path / f"f.{fmt}", FRAME, fmt)
        shape, dtype = declared_frame(path)
        assert shape == FRAME.shape and np.dtype(dtype) == np.int32
        assert read_image(path, shape=FRAME.shape).shape == FRAME.shape
        with pytest.raises(ImageReadError, match="declared in the header"):
            read_image(path, shape=(23, 37))


def test_mccd_tiff_bomb_rejected_before_decoding(tmp_path):
    """A MarCCD (.mccd) file is a TIFF read through fabio: its tags are checked first."""
    path = _bomb_tiff(tmp_path / "bomb.mccd", 12000, 12000)
    from PIL import Image

    with Image.open(path) as im:  # a TIFF Pillow (fabio's MarCCD reader) opens
        assert im.size == (12000, 12000)
    exc, seconds, peak = _rejected(path, shape=(1043, 981))
    assert "12000x12000" in str(exc) and "not decoded" in str(exc)
    assert peak < 20 * 2**20 and seconds < 5
    exc, _, _ = _rejected(path)
    assert "144,000,000 pixels" in str(exc) and "not decoded" in str(exc)


def test_cbf_decoy_size_line_does_not_defeat_the_check(tmp_path):
    """A comment declaring the expected size before the real MIME header must not win."""
    width, height = 20000, 20000
    head = (
        "###CBF: VERSION 1.5\n"
        "# X-Binary-Size-Fastest-Dimension: 981\n"
        "# X-Binary-Size-Second-Dimension: 1043\n"
        "data_bomb\n_array_data.data\n;\n--CIF-BINARY-FORMAT-SECTION--\n"
        'Content-Type: application/octet-stream;\n    conversions="x-CBF_BYTE_OFFSET"\n'
        "Content-Transfer-Encoding: BINARY\n"
        f"X-Binary-Size: {width * height}\n"
        "X-Binary-ID: 1\n"
        'X-Binary-Element-Type: "signed 32-bit integer"\n'
        "X-Binary-Element-Byte-Order: LITTLE_ENDIAN\n"
        f"X-Binary-Number-of-Elements: {width * height}\n"
        f"X-Binary-Size-Fastest-Dimension: {width}\n"
        f"X-Binary-Size-Second-Dimension: {height}\n"
        "X-Binary-Size-Padding: 4095\n\n"
    )
    body = b"\x0c\x1a\x04\xd5" + bytes(width * height // 1000)  # byte offset: zeros
    path = tmp_path / "bomb.cbf"
    path.write_bytes(head.encode() + body + b"\n--CIF-BINARY-FORMAT-SECTION----\n;\n")
    exc, seconds, peak = _rejected(path, shape=(1043, 981))
    assert "20000x20000" in str(exc) and "not decoded" in str(exc)
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MB allocated while rejecting"
