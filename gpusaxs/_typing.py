"""Type aliases of the public API (numpy.typing): the array kinds gpusaxs takes and returns."""

import os
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ArrayLike", "BoolArray", "FloatArray", "AnyArray", "PathLike"]

#: float64 values: curves, coordinates, sums
FloatArray: TypeAlias = NDArray[np.float64]
#: a mask, True = pixel excluded
BoolArray: TypeAlias = NDArray[np.bool_]
#: a detector frame or stack of any numeric dtype (uint8 ... float64)
AnyArray: TypeAlias = NDArray[Any]
#: a file name
PathLike: TypeAlias = str | os.PathLike[str]
