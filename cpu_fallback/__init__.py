"""The CPU engine of gpusaxs (numba kernels, SciPy reference), used when no CUDA device is present.

The engine shares the cores with the reader and writer threads of saxsdog and the server, so
OpenMP threads wait passively between kernel calls instead of spinning (set OMP_WAIT_POLICY
yourself to override; it must be set before the first kernel runs).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
