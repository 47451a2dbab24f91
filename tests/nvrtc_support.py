"""NVRTC (the compiler CuPy uses) and cuobjdump/nvdisasm from the registry's NVIDIA wheels, for
the CI tests that compile the CUDA kernels and read their machine code without a GPU.

``find_nvrtc()`` locates libnvrtc in the installed ``nvidia-cuda-nvrtc`` wheel (CUDA 13 layout
``nvidia/cu13/lib``, CUDA 12 layout ``nvidia/cuda_nvrtc/lib``) or the system; ``compile_cubin``
compiles a source for one architecture through ctypes and returns the CUBIN, the log and the
lowered (mangled) name of every name expression.
"""

import ctypes
import glob
import os
import re
import shutil
import subprocess
import sysconfig

#: The options CuPy's RawModule passes to NVRTC (plus the architecture).
CUPY_OPTIONS = ("--std=c++17", "-ftz=true", "--device-as-default-execution-space")


def _nvidia_dirs():
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    try:
        import nvidia

        roots.update(os.path.dirname(p) for p in nvidia.__path__)
    except ImportError:
        pass
    return [os.path.join(r, "nvidia") for r in roots if os.path.isdir(os.path.join(r, "nvidia"))]


def find_nvrtc():
    """Path of libnvrtc.so from the nvidia-cuda-nvrtc wheel (newest first), or None."""
    found = []
    for d in _nvidia_dirs():
        found += glob.glob(os.path.join(d, "*", "lib", "libnvrtc.so*"))
    found = [f for f in found if "builtins" not in f and "alt" not in os.path.basename(f)]
    return sorted(found)[-1] if found else None


def find_tool(name):
    """Path of a CUDA binary tool (cuobjdump, nvdisasm) from the nvidia-* wheels, or None."""
    for d in _nvidia_dirs():
        for path in sorted(glob.glob(os.path.join(d, "*", "bin", name)), reverse=True):
            if os.access(path, os.X_OK):
                return path
    return shutil.which(name)


class NvrtcError(RuntimeError):
    pass


class Nvrtc:
    """Minimal ctypes binding of NVRTC: version and compile to CUBIN."""

    def __init__(self, path):
        self.path = path
        # NVRTC dlopens libnvrtc-builtins by its soname; some wheels (13.0.48) give libnvrtc no
        # RUNPATH to find it beside itself, so it is loaded first, by path, into the process
        folder = os.path.dirname(path)
        for builtins in sorted(glob.glob(os.path.join(folder, "libnvrtc-builtins.so*"))):
            if ".alt." not in os.path.basename(builtins):
                ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
        self.lib = ctypes.CDLL(path)
        lib = self.lib
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = (major.value, minor.value)

    def _check(self, status, what, log=""):
        if status != 0:
            msg = self.lib.nvrtcGetErrorString(status).decode()
            raise NvrtcError(f"{what} failed: {msg}\n{log}")

    def compile_cubin(self, source, name_expressions, options, name="integrate.cu"):
        """(cubin bytes, log str, {name expression: lowered name})."""
        lib = self.lib
        prog = ctypes.c_void_p()
        self._check(
            lib.nvrtcCreateProgram(
                ctypes.byref(prog), source.encode(), name.encode(), 0, None, None
            ),
            "nvrtcCreateProgram",
        )
        try:
            for expr in name_expressions:
                self._check(
                    lib.nvrtcAddNameExpression(prog, expr.encode()),
                    f"nvrtcAddNameExpression({expr})",
                )
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            status = lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, buf)
            log = buf.value.decode(errors="replace")
            self._check(status, "nvrtcCompileProgram", log)
            self._check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
            cubin = ctypes.create_string_buffer(size.value)
            self._check(lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
            lowered = {}
            for expr in name_expressions:
                out = ctypes.c_char_p()
                self._check(
                    lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(out)),
                    f"nvrtcGetLoweredName({expr})",
                )
                lowered[expr] = out.value.decode()
            return cubin.raw, log, lowered
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


def run_tool(tool, *args, timeout=120):
    """stdout of a CUDA binary tool; raises with its stderr on failure."""
    proc = subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(tool)} {' '.join(args)}: {proc.stderr[-2000:]}")
    return proc.stdout


ARCHS = ("sm_80", "sm_90")


class Compiled:
    """One NVRTC compile of integrate.cu: cubin, log, lowered names; usage() from the log."""

    def __init__(self, cubin, log, lowered):
        self.cubin, self.log, self.lowered = cubin, log, lowered

    def usage(self):
        """{lowered name: registers, spill_stores, spill_loads, stack} from ptxas -v."""
        out = {}
        current = None
        for line in self.log.splitlines():
            m = re.search(r"Function properties for (\S+)", line)
            if m:
                current = out.setdefault(m.group(1), {})
            m = re.search(
                r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                r"loads",
                line,
            )
            if m and current is not None:
                current.update(
                    stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3))
                )
            m = re.search(r"Compiling entry function '(\S+)'", line)
            if m:
                current = out.setdefault(m.group(1), {})
            m = re.search(r"Used (\d+) registers", line)
            if m and current is not None:
                current["registers"] = int(m.group(1))
        return out


_SESSION = {}


def compile_source(source, names, arch, chunks=4):
    """Compile ``names`` of ``source`` for ``arch`` in ``chunks`` programs on threads (NVRTC
    releases the GIL); cached in this process and on disk (~/.cache/gpusaxs-nvrtc)."""
    import concurrent.futures
    import hashlib
    import pickle

    from gpusaxs.gpu_kernels import NVRTC_OPTIONS

    path = find_nvrtc()
    if path is None:
        import pytest

        pytest.skip("no NVRTC (pip install nvidia-cuda-nvrtc: part of .[test])")
    nvrtc = Nvrtc(path)
    options = list(CUPY_OPTIONS) + list(NVRTC_OPTIONS) + [f"-arch={arch}", "-Xptxas=-v"]
    key = hashlib.sha256(repr((source, sorted(names), options, nvrtc.version)).encode()).hexdigest()
    if key in _SESSION:
        return _SESSION[key]
    cache = os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
        "gpusaxs-nvrtc",
        key + ".pickle",
    )
    if os.path.exists(cache):
        with open(cache, "rb") as f:
            result = pickle.load(f)
    else:
        parts = [names[i::chunks] for i in range(chunks) if names[i::chunks]]
        workers = max(1, min(len(parts), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(lambda p: nvrtc.compile_cubin(source, p, options), parts))
        result = [(c, log, low) for c, log, low in done]
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        with open(cache + ".tmp", "wb") as f:
            pickle.dump(result, f)
        os.replace(cache + ".tmp", cache)
    _SESSION[key] = result
    return result


def compiled(arch):
    """The engine's kernels (kernel_names()) compiled for arch, as one Compiled (cubins of the
    chunks listed in .cubins)."""
    from gpusaxs.gpu_kernels import kernel_names, kernel_source

    parts = compile_source(kernel_source(), kernel_names(), arch)
    c = Compiled(b"".join(p[0] for p in parts), "\n".join(p[1] for p in parts), {})
    for p in parts:
        c.lowered.update(p[2])
    c.cubins = [p[0] for p in parts]
    return c
