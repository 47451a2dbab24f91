"""The heavy or optional packages that project modules import inside functions (issue 24).

Everything else, the project's own modules and the standard library included, is imported at
the top of a module. These packages are imported where they are used, so that ``import gpusaxs``
and every tool's ``--help`` stay fast, and a missing optional package fails only the feature
that needs it. tests/test_structure.py holds the sources to this list.
"""

#: top-level package names that may be imported inside a function
HEAVY_PACKAGES = frozenset(
    {
        "bitshuffle",  # bslz4 decoding on the host
        "bokeh",  # the dashboard
        "cbor2",  # Stream V2 messages
        "cupy",  # the GPU engine ([gpu] extra)
        "cupyx",
        "dask",  # the cluster mode ([dask] extra)
        "distributed",
        "fabio",  # detector image formats
        "h5py",  # HDF5 frames and NeXus output
        "hdf5plugin",
        "jsonschema",  # 0.3 s to import; only checked when a calibration is not cached
        "llvmlite",  # numba's compiler
        "lz4",  # Stream V1 frames
        "matplotlib",  # plots
        "nexusformat",
        "numba",  # the CPU kernels (compiling them costs seconds)
        "PIL",
        "pyFAI",  # PONI files written by pyFAI
        "scipy",  # scipy.sparse: 0.2 s to import
        "tifffile",
        "tornado",  # the dashboard's server
        "watchdog",  # watch mode
        "zmq",  # the network
    }
)

#: the project's modules that import a heavy package at their top (numba's kernels), so they
#: too are imported where they are used
HEAVY_MODULES = frozenset(
    {
        "gpusaxs.cpu_fallback.banded",
        "gpusaxs.cpu_fallback.gather",
        "gpusaxs.cpu_fallback.simd",
        "gpusaxs.cpu_fallback.robust_kernel",
    }
)
