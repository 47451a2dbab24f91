"""integrate.cu compiled in CI with NVRTC (the compiler CuPy uses, from the registry's
nvidia-cuda-nvrtc wheel, through ctypes), for sm_80 and sm_90 with CuPy's options: every name
expression the engine can request, failing on any error, warning or register spill.  The
cubins are shared with test_gpu_sass.py (one compile per test session, cached on disk by
source + options + NVRTC version)."""

import re

import pytest
from nvrtc_support import ARCHS, compiled

from gpusaxs.gpu_kernels import kernel_names

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles_without_warning_or_spill(arch):
    result = compiled(arch)
    names = kernel_names()
    assert set(result.lowered) == set(names)
    assert "warning" not in result.log.lower(), result.log[-4000:]
    assert "error" not in result.log.lower().replace("0 errors", ""), result.log[-4000:]
    usage = result.usage()
    for name in names:
        info = usage[result.lowered[name]]
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0, (name, info)
        assert info["stack"] == 0, (name, info)
        assert 0 < info["registers"] <= 255, (name, info)
    assert len(result.cubin) > 10000


def test_kernel_names_are_what_the_engine_requests():
    names = kernel_names()
    assert len(names) == 61  # 7 dtypes x 3 modes x 2 offsets pixel-major, + 2 frame-major
    assert all(re.fullmatch(r"gs_\w+<[a-z ]+(, \d+, \d, (true|false))?>", n) for n in names)
