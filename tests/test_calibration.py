"""Tests of gpusaxs.calibration: loading, validation, forms, errors, round trips."""

import copy
import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusaxs import calibration_model
from gpusaxs.calibration_file import (
    FLAT_DEFAULTS,
    SCHEMA_PATH,
    load_schema,
    read_json,
    to_flat_dict,
    to_nested_dict,
    validate_dict,
)
from gpusaxs.calibration_model import Calibration
from gpusaxs.errors import CalibrationError
from gpusaxs.poni import fit2d_to_poni, poni_to_fit2d

SPEC_EXAMPLE = {
    "PixelSizeMicroM": [172.0],
    "Imagesize": [1043, 981],
    "PixelPerRadialElement": 1,
    "Tilt": {"TiltRotDeg": 0, "TiltAngleDeg": 0},
    "MaskFile": "AAA_integ.msk",
    "Oversampling": 3,
    "Wavelength": 1.54,
    "BeamCenter": [808.37, 387.772],
    "DedectorDistanceMM": 1031.657,
}
SPEC_TILT_EXAMPLE = {  # section 4.3.1
    "PixelPerRadialElement": 1,
    "Imagesize": [1043, 981],
    "Tilt": {"TiltAngleDeg": -10, "TiltRotDeg": 73.569},
    "MaskFile": "emptymask.tif",
    "PixelSizeMicroM": [172.0, 172.0],
    "Wavelength": 1.54,
    "DedectorDistanceMM": 1031.657,
    "BeamCenter": [808.37, 387.772],
    "Oversampling": 2,
}
NESTED = {
    "Title": "two masks",
    "Geometry": {
        "Tilt": {"TiltRotDeg": 73.569, "TiltAngleDeg": -0.56},
        "BeamCenter": [808.37, 387.772],
        "DetectorDistanceMM": 1031.657,
        "Imagesize": [1043, 981],
        "PixelSizeMicroM": [172.0, 172.0],
    },
    "Wavelength": 1.54,
    "Masks": [
        {"MaskFile": "AAA_integ.msk", "Oversampling": 3, "PixelPerRadialElement": 1},
        {
            "MaskFile": "sub/other.msk",
            "Oversampling": 2,
            "PixelPerRadialElement": 2.5,
            "qStart": 0.1,
            "qStop": 3.0,
        },
    ],
    "Directory": ["/data/a", "/data/b"],
    "Threads": 4,
    "PolarizationCorrection": {"Fraction": 0.95, "Angle": 0.0},
}


def write(tmp_path, data, name="cal.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def test_reference_calibration(reference_dir):
    path = reference_dir / "buf1_00000.calibration.json"
    cal = Calibration.from_file(path)
    assert cal.title.startswith("buf1_00000 reference")
    assert cal.beam_center == (808.37, 387.772)
    assert cal.distance_mm == 1031.657
    assert cal.imagesize == (1043, 981)
    assert cal.pixel_size_um == (172.0, 172.0)
    assert cal.wavelength_A == 1.54
    assert cal.tilt_angle_deg == -0.56 and cal.tilt_rot_deg == 73.569
    assert cal.oversampling == 3 and isinstance(cal.oversampling, int)
    assert cal.pixel_per_radial_element == 1.0
    assert cal.mask_file == str(reference_dir / "AAA_integ.msk")
    assert os.path.isfile(cal.mask_file)
    assert cal.polarization is None and cal.q_start is None and cal.q_stop is None
    assert cal.source == str(path)
    assert Calibration.all_from_file(path) == [cal]
    key = cal.key()
    assert len(key) == 64 and key == Calibration.from_file(path).key()


def test_schema_file_is_valid_and_shipped():
    import jsonschema

    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert SCHEMA_PATH.name == "calibration.schema.json" and SCHEMA_PATH.parent.name == "schemas"
    validator = jsonschema.Draft202012Validator(schema)  # the top-level oneOf takes both forms
    assert validator.is_valid(SPEC_EXAMPLE) and validator.is_valid(NESTED)
    assert not validator.is_valid({**SPEC_EXAMPLE, "DetectorDistanceMM": 1.0})
    defaults = {k: v.get("default") for k, v in schema["$defs"].items() if isinstance(v, dict)}
    assert defaults["Oversampling"] == FLAT_DEFAULTS["Oversampling"] == 3
    assert defaults["Distance"] == FLAT_DEFAULTS["DedectorDistanceMM"]
    assert validate_dict(FLAT_DEFAULTS) == "flat"


@pytest.mark.parametrize(
    "fragment",
    [
        {"Title": ""},
        {"Tilt": {"TiltRotDeg": 0, "TiltAngleDeg": 0}},
        {"BeamCenter": [808.37, 387.772]},
        {"DedectorDistanceMM": 1031.657},
        {"Imagesize": [1043, 981]},
        {"MaskFile": "AAA_integ.msk"},
        {"Oversampling": 3},
        {"PixelSizeMicroM": [172.0]},
        {"PixelPerRadialElement": 1},
        {"Wavelength": 1.54},
        {"PolarizationCorrection": {"Angle": 0.0, "Fraction": 0.95}},
    ],
)
def test_spec_section_examples(fragment, tmp_path):
    d = {**SPEC_EXAMPLE, **fragment}
    assert validate_dict(d) == "flat"
    cal = Calibration.from_dict(d, base_dir=tmp_path)
    if "PolarizationCorrection" in fragment:
        assert cal.polarization == (0.95, 0.0)
    if "Title" in fragment:
        assert cal.title == ""


def test_spec_full_examples(tmp_path):
    cal = Calibration.from_dict(SPEC_EXAMPLE, base_dir=tmp_path)
    assert cal.pixel_size_um == (172.0, 172.0)  # one element = square pixels
    assert cal.mask_file == str(tmp_path / "AAA_integ.msk")
    tilt = Calibration.from_dict(SPEC_TILT_EXAMPLE, base_dir=tmp_path)
    assert tilt.tilt_angle_deg == -10.0 and tilt.oversampling == 2
    assert tilt.mask_file == str(tmp_path / "emptymask.tif")


def test_pixel_size_order():
    cal = Calibration.from_dict({**SPEC_EXAMPLE, "PixelSizeMicroM": [75.0, 172.0]}, base_dir="/")
    assert cal.pixel_size_um == (75.0, 172.0)  # (along rows / Y, along columns / X)
    assert cal.to_dict()["PixelSizeMicroM"] == [75.0, 172.0]


def test_distance_synonym(tmp_path):
    d = dict(SPEC_EXAMPLE)
    d["DetectorDistanceMM"] = d.pop("DedectorDistanceMM")
    a = Calibration.from_dict(d, base_dir=tmp_path)
    b = Calibration.from_dict(SPEC_EXAMPLE, base_dir=tmp_path)
    assert a == b and a.distance_mm == 1031.657


def test_nested_form(tmp_path):
    path = write(tmp_path, NESTED)
    cals = Calibration.all_from_file(path)
    assert len(cals) == 2
    first, second = cals
    assert first == Calibration.from_file(path) == Calibration.from_file(path, mask_index=0)
    assert second == Calibration.from_file(path, mask_index=1)
    assert first.mask_file == str(tmp_path / "AAA_integ.msk")
    assert second.mask_file == str(tmp_path / "sub" / "other.msk")
    assert second.oversampling == 2 and second.pixel_per_radial_element == 2.5
    assert (second.q_start, second.q_stop) == (0.1, 3.0)
    assert first.q_start is None
    assert first.polarization == (0.95, 0.0) and first.title == "two masks"
    assert first.beam_center == second.beam_center == (808.37, 387.772)
    with pytest.raises(CalibrationError, match=r"#/Masks: mask index 2 out of range"):
        Calibration.from_file(path, mask_index=2)


def test_nested_flat_equivalence(tmp_path):
    for i in range(2):
        flat = to_flat_dict(NESTED, i)
        assert validate_dict(flat) == "flat"
        assert "Directory" not in flat and "Threads" not in flat
        assert Calibration.from_dict(flat, base_dir=tmp_path) == Calibration.from_dict(
            NESTED, base_dir=tmp_path, mask_index=i
        )
    nested = to_nested_dict(SPEC_EXAMPLE)
    assert validate_dict(nested) == "nested"
    assert to_flat_dict(nested) == SPEC_EXAMPLE
    assert Calibration.from_dict(nested, base_dir=tmp_path) == Calibration.from_dict(
        SPEC_EXAMPLE, base_dir=tmp_path
    )
    cal = Calibration.from_dict(NESTED, base_dir=tmp_path, mask_index=1)
    assert Calibration.from_dict(cal.to_dict("nested")) == cal
    assert cal.to_dict("nested")["Masks"][0]["qStop"] == 3.0


def test_mask_file_resolution(tmp_path, monkeypatch):
    sub = tmp_path / "beamline"
    sub.mkdir()
    path = write(sub, {**SPEC_EXAMPLE, "MaskFile": "masks/a.msk"})
    monkeypatch.chdir(tmp_path)
    assert Calibration.from_file(path).mask_file == str(sub / "masks" / "a.msk")
    assert Calibration.from_file(os.path.relpath(path)).mask_file == str(sub / "masks" / "a.msk")
    assert Calibration.from_dict({**SPEC_EXAMPLE, "MaskFile": "b.msk"}).mask_file == str(
        tmp_path / "b.msk"
    )
    assert (
        Calibration.from_dict({**SPEC_EXAMPLE, "MaskFile": "/abs/c.msk"}, base_dir=sub).mask_file
        == "/abs/c.msk"
    )
    assert Calibration.from_dict({**SPEC_EXAMPLE, "MaskFile": None}).mask_file is None


def test_to_json_atomic_and_relative(tmp_path):
    cal = Calibration.from_dict(SPEC_TILT_EXAMPLE, base_dir=tmp_path)
    out = tmp_path / "out.json"
    cal.to_json(out)
    assert json.loads(out.read_text())["MaskFile"] == "emptymask.tif"
    assert Calibration.from_file(out) == cal
    assert sorted(os.listdir(tmp_path)) == ["out.json"]  # no temporary file left
    cal.to_json(out, form="nested")
    assert "Geometry" in json.loads(out.read_text())
    assert Calibration.from_file(out) == cal
    elsewhere = Calibration.from_dict({**SPEC_EXAMPLE, "MaskFile": "/abs/m.msk"})
    elsewhere.to_json(out)
    assert json.loads(out.read_text())["MaskFile"] == "/abs/m.msk"


def test_replace_and_key(tmp_path):
    (tmp_path / "AAA_integ.msk").write_bytes(b"mask one")
    cal = Calibration.from_dict(SPEC_EXAMPLE, base_dir=tmp_path)
    key = cal.key()
    moved = cal.replace(beam_center=(800.0, 390.0))
    assert moved.beam_center == (800.0, 390.0) and moved.distance_mm == cal.distance_mm
    assert moved.key() != key
    assert cal.replace(title="another title").key() == key  # title is not geometry
    assert cal.replace(oversampling=2).key() != key
    (tmp_path / "AAA_integ.msk").write_bytes(b"mask two")
    assert cal.key() != key  # mask content enters
    with pytest.raises(CalibrationError, match="#/DedectorDistanceMM"):
        cal.replace(distance_mm=-1.0)
    with pytest.raises(CalibrationError, match="#/Oversampling"):
        cal.replace(oversampling=1.5)
    with pytest.raises(CalibrationError, match="#/MaskFile"):
        cal.replace(mask_file=str(tmp_path / "missing.msk")).key()
    with pytest.raises(dataclasses_frozen_error()):
        cal.distance_mm = 3.0


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_load_mask_uses_io_masks(tmp_path, monkeypatch):
    calls = []

    def fake_read_mask(path, shape):
        calls.append((path, shape))
        m = np.zeros(shape, dtype=np.uint8)
        m[0, 0] = 1
        return m

    monkeypatch.setattr(calibration_model, "read_mask", fake_read_mask)
    cal = Calibration.from_dict(SPEC_EXAMPLE, base_dir=tmp_path)
    mask = cal.load_mask()
    assert calls == [(str(tmp_path / "AAA_integ.msk"), (1043, 981))]
    assert mask.dtype == bool and mask.shape == (1043, 981) and mask.sum() == 1 and mask[0, 0]
    nomask = cal.replace(mask_file=None).load_mask()
    assert nomask.shape == (1043, 981) and not nomask.any()


# ------------------------------------------------------------------------------ errors
def _without(d, *keys):
    d = copy.deepcopy(d)
    for k in keys:
        d.pop(k)
    return d


def _with(path, value):
    d = copy.deepcopy(SPEC_EXAMPLE)
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return d


BAD = [
    ("missing wavelength", _without(SPEC_EXAMPLE, "Wavelength"), "#/Wavelength", "missing"),
    ("missing tilt angle", _with(["Tilt"], {"TiltRotDeg": 0}), "#/Tilt/TiltAngleDeg", "missing"),
    ("tilt angle string", _with(["Tilt", "TiltAngleDeg"], "ten"), "#/Tilt/TiltAngleDeg", "number"),
    ("tilt angle bool", _with(["Tilt", "TiltAngleDeg"], True), "#/Tilt/TiltAngleDeg", "number"),
    ("negative distance", _with(["DedectorDistanceMM"], -5), "#/DedectorDistanceMM", "0"),
    ("zero wavelength", _with(["Wavelength"], 0), "#/Wavelength", "0"),
    (
        "no distance",
        _without(SPEC_EXAMPLE, "DedectorDistanceMM"),
        "#/DedectorDistanceMM",
        "missing",
    ),
    ("both distances", _with(["DetectorDistanceMM"], 1000.0), "#/DetectorDistanceMM", "both"),
    ("beam center one value", _with(["BeamCenter"], [808.37]), "#/BeamCenter", "number of items"),
    ("beam center string", _with(["BeamCenter"], [808.37, "x"]), "#/BeamCenter/1", "number"),
    ("imagesize float", _with(["Imagesize"], [1043.5, 981]), "#/Imagesize/0", "integer"),
    ("imagesize zero", _with(["Imagesize"], [0, 981]), "#/Imagesize/0", "minimum"),
    ("oversampling zero", _with(["Oversampling"], 0), "#/Oversampling", "minimum"),
    (
        "pixel size three",
        _with(["PixelSizeMicroM"], [1.0, 2.0, 3.0]),
        "#/PixelSizeMicroM",
        "number of items",
    ),
    ("pixel size negative", _with(["PixelSizeMicroM"], [-172.0]), "#/PixelSizeMicroM/0", "0"),
    (
        "fraction > 1",
        _with(["PolarizationCorrection"], {"Fraction": 1.5, "Angle": 0}),
        "#/PolarizationCorrection/Fraction",
        "maximum",
    ),
    ("typo field", _with(["Wavelenght"], 1.54), "#/Wavelenght", "did you mean 'Wavelength'"),
    ("mask file number", _with(["MaskFile"], 3), "#/MaskFile", "string"),
    ("not an object", [1, 2], "#", "object"),
    ("qstop < qstart", {**SPEC_EXAMPLE, "qStart": 2.0, "qStop": 1.0}, "#/qStop", "larger"),
    (
        "nested missing mask file",
        {**NESTED, "Masks": [{"Oversampling": 3, "PixelPerRadialElement": 1}]},
        "#/Masks/0/MaskFile",
        "missing",
    ),
    ("nested bad threads", {**NESTED, "Threads": "four"}, "#/Threads", "integer"),
    ("nested no masks", {**NESTED, "Masks": []}, "#/Masks", ""),
    (
        "nested geometry distance negative",
        {**NESTED, "Geometry": {**NESTED["Geometry"], "DetectorDistanceMM": -1}},
        "#/Geometry/DetectorDistanceMM",
        "0",
    ),
]


@pytest.mark.parametrize("name,data,json_path,words", BAD, ids=[b[0] for b in BAD])
def test_bad_calibration_names_file_and_path(name, data, json_path, words, tmp_path):
    path = write(tmp_path, data)
    with pytest.raises(CalibrationError) as info:
        Calibration.from_file(path)
    exc = info.value
    assert exc.path == str(path)
    assert exc.json_path == json_path
    msg = str(exc)
    assert msg.startswith(f"{path}: {json_path}: ")
    assert words.lower() in msg.lower()
    with pytest.raises(CalibrationError) as info2:  # the dict API says the same without a file
        Calibration.from_dict(data)
    assert info2.value.json_path == json_path and info2.value.path is None


@pytest.mark.parametrize(
    "text,words",
    [
        ('{"Wavelength": 1.54,\n  "Tilt": }', "line 2, column 11"),
        ('{"Wavelength": 1.54, "Wavelength": 1.0}', "duplicate key 'Wavelength'"),
        ('{"Wavelength": NaN}', "NaN is not allowed"),
        ("", "line 1, column 1"),
    ],
)
def test_not_json(text, words, tmp_path):
    path = write(tmp_path, text)
    with pytest.raises(CalibrationError) as info:
        Calibration.from_file(path)
    assert str(info.value).startswith(f"{path}: #: not valid JSON")
    assert words in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CalibrationError, match=r"nope\.json: #: file not found"):
        Calibration.from_file(tmp_path / "nope.json")
    with pytest.raises(CalibrationError, match="is a directory"):
        read_json(tmp_path)
    with pytest.raises(CalibrationError, match="file not found"):
        Calibration.all_from_file(tmp_path / "nope.json")


def test_comment_keys_allowed(tmp_path):
    cal = Calibration.from_dict({**SPEC_EXAMPLE, "_comment": "measured 2024"}, base_dir=tmp_path)
    assert cal.beam_center == (808.37, 387.772)


# ------------------------------------------------------------------------------ round trips
finite = dict(allow_nan=False, allow_infinity=False)
calibrations = st.builds(
    Calibration,
    title=st.one_of(st.none(), st.text(max_size=20)),
    beam_center=st.tuples(st.floats(-1e4, 1e4, **finite), st.floats(-1e4, 1e4, **finite)),
    # within gpusaxs.physical_ranges.RANGES (values outside: test_calibration_units.py)
    distance_mm=st.floats(5, 1e5, **finite),
    imagesize=st.tuples(st.integers(1, 10000), st.integers(1, 10000)),
    pixel_size_um=st.tuples(st.floats(1, 1e4, **finite), st.floats(1, 1e4, **finite)),
    wavelength_A=st.floats(1e-2, 50, **finite),
    tilt_angle_deg=st.floats(-89, 89, **finite),
    tilt_rot_deg=st.floats(-360, 360, **finite),
    oversampling=st.integers(1, 10),
    pixel_per_radial_element=st.floats(1e-3, 100, **finite),
    mask_file=st.one_of(st.none(), st.sampled_from(["/data/a.msk", "/x y/mask.tif"])),
    polarization=st.one_of(
        st.none(), st.tuples(st.floats(0, 1, **finite), st.floats(-360, 360, **finite))
    ),
    q_start=st.one_of(st.none(), st.floats(0, 1, **finite)),
    q_stop=st.one_of(st.none(), st.floats(2, 100, **finite)),
)


@settings(max_examples=150, deadline=None)
@given(calibrations, st.sampled_from(["flat", "nested"]))
def test_round_trip(cal, form):
    d = cal.to_dict(form)
    again = Calibration.from_dict(json.loads(json.dumps(d)))
    assert again == cal
    assert again.to_dict(form) == d
    assert validate_dict(d) == form
    assert again.key() == cal.key() if cal.mask_file is None else True


# ------------------------------------------------------------------------------ fit2d <-> PONI math
@settings(max_examples=200, deadline=None)
@given(
    st.floats(10, 5000),
    st.floats(-500, 1500),
    st.floats(-500, 1500),
    st.floats(-45, 45),
    st.floats(-180, 180),
    st.floats(20, 300),
    st.floats(20, 300),
)
def test_fit2d_poni_inverse(dist, cx, cy, tilt, rot, px, py):
    g = fit2d_to_poni(dist, cx, cy, tilt, rot, px, py)
    f = poni_to_fit2d(
        g["dist"], g["poni1"], g["poni2"], g["rot1"], g["rot2"], g["rot3"], g["pixel1"], g["pixel2"]
    )
    assert f["distance_mm"] == pytest.approx(dist, rel=1e-9)
    assert f["center_x_px"] == pytest.approx(cx, abs=1e-6)
    assert f["center_y_px"] == pytest.approx(cy, abs=1e-6)
    assert abs(f["twist_rad"]) < 1e-12
    # (tilt, rot) and (-tilt, rot + 180) are the same geometry: compare the beam direction
    t0, r0 = math.radians(tilt), math.radians(rot)
    t1, r1 = math.radians(f["tilt_deg"]), math.radians(f["tilt_plane_rot_deg"])
    k0 = [math.sin(t0) * math.sin(r0), math.sin(t0) * math.cos(r0), math.cos(t0)]
    k1 = [math.sin(t1) * math.sin(r1), math.sin(t1) * math.cos(r1), math.cos(t1)]
    assert k1 == pytest.approx(k0, abs=1e-12)
    assert f["tilt_deg"] >= 0 and -180 < f["tilt_plane_rot_deg"] <= 180


# ---------------------------------------------------------------- limits and hints (issue 15)


def _small_cal(**changes):
    base = dict(
        beam_center=(100.0, 80.0),
        distance_mm=1000.0,
        imagesize=(200, 180),
        pixel_size_um=(172.0, 172.0),
        wavelength_A=1.54,
        oversampling=3,
        pixel_per_radial_element=1.0,
    )
    return Calibration(**{**base, **changes})


def test_tiny_radial_bins_rejected_before_building():
    """PixelPerRadialElement 1e-3 asked for 283k bins (1.1 GB and a minute on 1000^2)."""
    from gpusaxs.integrator import Integrator

    cal = _small_cal(pixel_per_radial_element=1e-3)
    with pytest.raises(
        CalibrationError,
        match=r"#/PixelPerRadialElement: .*radial bins is more "
        r"than the limit of 100,000",
    ):
        Integrator(cal, backend="numpy", cache_dir=False)


def test_huge_oversampling_rejected_before_building():
    """Oversampling 64 on 300x300 pixels is 368 M sub-pixels (minutes of building)."""
    from gpusaxs.integrator import Integrator

    cal = _small_cal(imagesize=(300, 300), beam_center=(150.0, 150.0), oversampling=64)
    with pytest.raises(
        CalibrationError,
        match=r"#/Oversampling: .*sub-pixels, more than the "
        r"limit of 268,435,456 \(at most Oversampling 54",
    ):
        Integrator(cal, backend="numpy", cache_dir=False)


def test_huge_imagesize_rejected_before_building():
    """Imagesize 100000^2 died in a MemoryError traceback."""
    from gpusaxs.integrator import Integrator

    cal = _small_cal(imagesize=(100000, 100000))
    with pytest.raises(
        CalibrationError,
        match=r"#/Imagesize: 100000 x 100000 = "
        r"10,000,000,000 pixels is more than the limit",
    ):
        Integrator(cal, backend="numpy", cache_dir=False)


def test_q_range_limits():
    from gpusaxs.matrix_limits import check_limits

    with pytest.raises(CalibrationError, match=r"#/qStop: .*qStop 1e\+06 nm\^-1 is far beyond"):
        check_limits(_small_cal(q_start=0.1, q_stop=1e6))
    with pytest.raises(
        CalibrationError,
        match=r"#/qStart: qStart \(50 nm\^-1\) is beyond the "
        r"largest q",
    ):
        check_limits(_small_cal(q_start=50.0, q_stop=60.0))
    with pytest.raises(CalibrationError, match="q_edges given"):
        check_limits(_small_cal(), q_edges=np.linspace(0, 1, 200_002))
    with pytest.raises(CalibrationError, match="more than the limit of 100 "):
        check_limits(_small_cal(), bins=100, pixels=10**6)  # limits can be lowered per call


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"pixel_per_radial_element": 0.37},
        {"q_start": 0.5, "q_stop": 1.2},
        {"q_stop": 5.0},
        {"tilt_angle_deg": 20.0, "tilt_rot_deg": 30.0, "beam_center": (-50.0, 250.0)},
    ],
)
def test_bin_count_and_memory_estimate_match_the_built_matrix(changes):
    from gpusaxs.matrix import build_matrix
    from gpusaxs.matrix_limits import check_limits, estimate_matrix_bytes

    cal = _small_cal(**changes)
    est = check_limits(cal)
    m = build_matrix(cal)
    assert est["bins"] == m.n_bins
    actual = m.nbytes + m.norm.nbytes + m.q_edges.nbytes
    assert actual <= estimate_matrix_bytes(cal) <= 3 * actual


def test_reference_calibration_within_limits(reference_dir):
    cal = Calibration.from_file(reference_dir / "buf1_00000.calibration.json")
    est = cal.check_limits()
    assert est["bins"] == 1002 and est["pixels"] == 1043 * 981
    # an EIGER2 16M at Oversampling 3 is allowed (163 M sub-pixels); 4 is not
    eiger = cal.replace(imagesize=(4362, 4148), mask_file=None)
    eiger.check_limits()
    with pytest.raises(CalibrationError, match="at most Oversampling 3"):
        eiger.replace(oversampling=4).check_limits()


def test_misspelt_required_key_did_you_mean(tmp_path):
    d = dict(SPEC_EXAMPLE)
    d["Wavelenght"] = d.pop("Wavelength")
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(d))
    with pytest.raises(
        CalibrationError,
        match=r"#/Wavelength: required field is missing \(found "
        r"'Wavelenght': did you mean 'Wavelength'\?\)",
    ):
        Calibration.from_file(path)
    d = dict(SPEC_EXAMPLE)
    d["DetectorDistanceMm"] = d.pop("DedectorDistanceMM")
    with pytest.raises(CalibrationError, match="did you mean 'DetectorDistanceMM'"):
        validate_dict(d)
    d = dict(SPEC_EXAMPLE)
    del d["Oversampling"]
    with pytest.raises(CalibrationError, match=r"#/Oversampling: required field is missing$"):
        validate_dict(d)


def test_json_error_has_no_doubled_at(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text('{"Title": "unterminated}')
    with pytest.raises(CalibrationError) as ei:
        read_json(path)
    msg = str(ei.value)
    assert " at at " not in msg
    assert "Unterminated string starting at line 1, column 11" in msg
    path.write_text('{"a": 1,}')
    with pytest.raises(CalibrationError, match="double quotes at line 1, column 9"):
        read_json(path)
