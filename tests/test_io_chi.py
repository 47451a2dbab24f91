"""gpusaxs.io.chi (write_chi / read_chi) and gpusaxs.io.atomic."""

import os
import stat

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpusaxs.io.chi as chi_mod
from gpusaxs.errors import ChiFormatError
from gpusaxs.io import atomic_save_bytes, atomic_write, format_chi_rows, read_chi, write_chi


def _py_format(v):
    """The reference: Python's %14.7E with lower-case nan/inf."""
    return ("%14.7E" % v).replace("NAN", "nan").replace("INF", "inf")  # noqa: UP031 - printf


# ---------------------------------------------------------------- fit2d's file


def test_read_fit2d_reference(reference_dir):
    path = reference_dir / "buf1_00000.fit2d.chi"
    assert b"\r\n" in path.read_bytes()  # CRLF file
    c = read_chi(path)
    assert c.q.shape == c.intensity.shape == (1002,)
    assert c.error is None
    assert c.q[0] == 3.3657656e-03
    assert c.q[-1] == 6.7416286e00
    assert c.title == "buf1_00000.tif: Q-Space Scan"
    assert c.q_label == "Q (Inverse Nanometres)"
    assert c.i_label == ""
    assert np.all(np.diff(c.q) > 0)
    # uniform bins (fit2d computes them in single precision: steps differ by < 1e-6)
    np.testing.assert_allclose(np.diff(c.q), (c.q[-1] - c.q[0]) / 1001, rtol=0, atol=1e-6)
    assert (c.intensity > 0).sum() > 500 and (c.intensity >= 0).all()


def test_fit2d_reference_rewritten_identically(reference_dir, tmp_path):
    """Our writer reproduces fit2d's data rows byte for byte (apart from CRLF)."""
    ref = read_chi(reference_dir / "buf1_00000.fit2d.chi")
    out = tmp_path / "copy.chi"
    write_chi(out, ref.q, ref.intensity, title=ref.title, q_label=ref.q_label, i_label=ref.i_label)
    ref_lines = (reference_dir / "buf1_00000.fit2d.chi").read_bytes().split(b"\r\n")
    our_lines = out.read_bytes().split(b"\n")
    assert our_lines == ref_lines


# ---------------------------------------------------------------- our format


def test_written_layout(tmp_path):
    path = tmp_path / "c.chi"
    q = np.array([3.3657656e-3, 1.0e-2, 6.7416286])
    write_chi(path, q, [123.45678, np.nan, 0.0], [4.5, 1e-30, -2.0], title="/data/img.tif")
    raw = path.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    lines = raw.decode().split("\n")[:-1]
    assert lines[:4] == ["/data/img.tif", "q (nm^-1)", "Intensity", "          3"]
    assert lines[4] == " 3.3657656E-03  1.2345678E+02  4.5000000E+00"
    assert lines[5] == " 1.0000000E-02            nan  1.0000000E-30"
    assert lines[6] == " 6.7416286E+00  0.0000000E+00 -2.0000000E+00"
    assert len(lines) == 7


def test_two_columns_without_error(tmp_path):
    path = tmp_path / "c.chi"
    write_chi(path, [1.0, 2.0], [3.0, 4.0])
    assert path.read_text().split("\n")[4] == " 1.0000000E+00  3.0000000E+00"
    c = read_chi(path)
    assert c.error is None
    assert c.q.tolist() == [1.0, 2.0] and c.intensity.tolist() == [3.0, 4.0]


def test_header_lines_sanitised(tmp_path):
    path = tmp_path / "c.chi"
    write_chi(path, [1.0], [2.0], title="a\nb\r\nc", q_label="2theta (deg)", i_label="I\n")
    c = read_chi(path)
    assert (c.title, c.q_label, c.i_label) == ("a b c", "2theta (deg)", "I")
    assert c.q.tolist() == [1.0]


def test_empty_curve(tmp_path):
    path = tmp_path / "e.chi"
    write_chi(path, [], [], [])
    assert path.read_text().split("\n")[3] == "          0"
    c = read_chi(path)
    assert c.q.shape == (0,) and c.intensity.shape == (0,)


def test_write_rejects_mismatched_arrays(tmp_path):
    with pytest.raises(ValueError, match="intensity"):
        write_chi(tmp_path / "x.chi", [1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="error"):
        write_chi(tmp_path / "x.chi", [1.0, 2.0], [1.0, 2.0], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="q"):
        write_chi(tmp_path / "x.chi", [[1.0, 2.0]], [1.0, 2.0])
    assert not (tmp_path / "x.chi").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def chi_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("chi")


finite_or_nan = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.floats(min_value=1e-6, max_value=1e6),
    st.just(np.nan),
    st.just(0.0),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(1, 60), with_error=st.booleans())
def test_roundtrip_8_significant_digits(chi_dir, data, n, with_error):
    cols = [
        data.draw(hnp.arrays(np.float64, n, elements=finite_or_nan), label=name)
        for name in (("q", "I", "err") if with_error else ("q", "I"))
    ]
    path = chi_dir / "rt.chi"
    write_chi(path, *cols, title="t")
    lines = path.read_text().split("\n")
    assert lines[3] == f"{n:>11d}"
    assert len(lines) == 4 + n + 1 and lines[-1] == ""
    c = read_chi(path)
    back = [c.q, c.intensity] + ([c.error] if with_error else [])
    assert (c.error is None) == (not with_error)
    for orig, got in zip(cols, back, strict=True):
        # exactly what 8 significant digits give: float("%.7E" % x)
        expected = np.array([float("%.7E" % v) for v in orig])  # noqa: UP031 - printf reference
        np.testing.assert_array_equal(got, expected)
        finite = np.isfinite(orig) & (orig != 0)
        assert np.all(np.abs(got[finite] - orig[finite]) <= 5.0000001e-8 * np.abs(orig[finite]))


@settings(max_examples=300, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, max_side=8),
        elements=st.floats(width=64),
    )
)
def test_fast_formatter_equals_python_formatting(cols):
    """The vectorised formatter is byte-identical to '%14.7E' for every double."""
    expected = "".join(" ".join(_py_format(v) for v in row) + "\n" for row in cols.tolist())
    assert format_chi_rows(cols) == expected.encode()


@pytest.mark.parametrize(
    "values",
    [
        [
            1.00000005,
            1.000000050000001,
            9.99999995,
            99999999.5,
            0.99999999995,
            1e-99,
            9.9e99,
            1.00000015,
            2.5e-8,
            0.1,
            0.3,
            -0.0,
            1e7,
            123456785.0,
        ],
        [1e-100, 5e-324, 1.7976931348623157e308, 9.999999999e99, 1e100, float("inf")],
    ],
)
def test_fast_formatter_edge_values(values):
    cols = np.array(values, dtype=np.float64).reshape(-1, 1)
    expected = "".join(_py_format(v) + "\n" for v in values)
    assert format_chi_rows(cols) == expected.encode()


def test_typical_curve_uses_vectorised_path(monkeypatch):
    def boom(cols):
        raise AssertionError("per-value formatting used")

    monkeypatch.setattr(chi_mod, "_format_slow", boom)
    rng = np.random.default_rng(0)
    q = np.linspace(3e-3, 6.7, 1000)
    i = rng.gamma(2.0, 500.0, 1000)
    i[:5] = np.nan
    cols = np.stack([q, i, np.sqrt(i)], axis=1)
    out = format_chi_rows(cols)
    assert len(out) == 1000 * 45
    assert out.split(b"\n")[0] == b" 3.0000000E-03            nan            nan"


# ---------------------------------------------------------------- bad files


def _chi(tmp_path, text, name="bad.chi"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


GOOD = "t\nq\nI\n          3\n 1.0E+00 2.0E+00\n 2.0E+00 3.0E+00\n 3.0E+00 4.0E+00\n"


@pytest.mark.parametrize(
    "text,match",
    [
        ("t\nq\n", r"line 3: expected 4 header lines"),
        ("t\nq\nI\n  three\n 1 2\n", r"line 4: expected the number of rows"),
        ("t\nq\nI\n -1\n", r"line 4: negative"),
        (
            GOOD.replace(" 2.0E+00 3.0E+00\n", ""),
            r"line 7: unexpected end of file.*says 3 rows, found 2",
        ),
        (GOOD + " 4.0 5.0\n", r"line 8: extra data"),
        (GOOD.replace("3.0E+00 4.0E+00", "3.0E+00 x4.0"), r"line 7: not a number: 'x4.0'"),
        (
            GOOD.replace("2.0E+00 3.0E+00", "2.0E+00 3.0E+00 1.0"),
            r"line 6: expected 2 columns, got 3",
        ),
        (GOOD.replace(" 2.0E+00 3.0E+00\n", "\n"), r"line 6: expected 2 columns, got 0"),
        ("t\nq\nI\n 1\n 1 2 3 4\n", r"line 5: expected 2 or 3 columns, got 4"),
    ],
)
def test_bad_files_name_the_line(tmp_path, text, match):
    path = _chi(tmp_path, text)
    with pytest.raises(ChiFormatError, match=match) as ei:
        read_chi(path)
    assert ei.value.path == str(path)
    assert "\n" not in str(ei.value)


def test_good_file_and_trailing_blank_lines(tmp_path):
    c = read_chi(_chi(tmp_path, GOOD.replace("\n", "\r\n") + "\r\n\r\n"))
    assert c.q.tolist() == [1.0, 2.0, 3.0] and c.intensity.tolist() == [2.0, 3.0, 4.0]


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(ChiFormatError, match="no such file"):
        read_chi(tmp_path / "nope.chi")
    with pytest.raises(ChiFormatError):
        read_chi(_chi(tmp_path, bytes(range(256)) * 4))


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_and_uses_hidden_tmp(tmp_path):
    target = tmp_path / "out.chi"
    target.write_text("old")
    with atomic_write(target) as fh:
        fh.write("new")
        names = [p.name for p in tmp_path.iterdir() if p.name != "out.chi"]
        assert len(names) == 1
        assert names[0].startswith(".out.chi.") and names[0].endswith(".tmp")
        assert target.read_text() == "old"  # not visible before the block ends
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.chi"]


def test_atomic_write_exception_keeps_target(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "wb") as fh:
            fh.write(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_fsync_binary_and_permissions(tmp_path):
    atomic_save_bytes(tmp_path / "a.bin", b"\x00\x01\r\n", fsync=True)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01\r\n"
    with open(tmp_path / "plain", "w"):
        pass
    # same permissions as a plainly created file (umask respected, not mkstemp's 0600)
    assert stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode) == stat.S_IMODE(
        os.stat(tmp_path / "plain").st_mode
    )


def test_atomic_write_bad_mode(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "x", "a"):
            pass
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- calibration key (issue 15)


def test_calibration_key_on_the_title_line(tmp_path):
    from gpusaxs.io.chi import read_chi_key

    key = "0123456789abcdef" * 4
    path = tmp_path / "k.chi"
    write_chi(path, [1.0, 2.0], [3.0, 4.0], [0.1, 0.2], title="frame.tif", calibration_key=key)
    lines = path.read_text().splitlines()
    assert lines[0] == f"frame.tif  calibration_key={key}"
    assert lines[3].strip() == "2" and len(lines) == 6  # still a 4-line header .chi
    c = read_chi(path)
    assert c.title == "frame.tif" and c.calibration_key == key
    assert read_chi_key(path) == key
    write_chi(path, [1.0], [3.0], title="no key")
    assert read_chi(path).calibration_key is None and read_chi_key(path) is None
    assert read_chi_key(tmp_path / "missing.chi") is None
    with pytest.raises(ValueError, match="hex"):
        write_chi(path, [1.0], [3.0], calibration_key="not hex!")


def test_fit2d_curve_has_no_key(reference_dir):
    from gpusaxs.io.chi import read_chi_key

    assert read_chi_key(reference_dir / "buf1_00000.fit2d.chi") is None
