"""saxsdog --average: its options read into the averaging's parameters (issue 27); the
averaging itself is :mod:`gpusaxs.robust_curves` (shared with saxsdogserver)."""

from gpusaxs.robust_curves import (
    AVERAGES,
    AveragedIntegrator,
    average_key,
    average_title,
    parse_percentile,
)
from gpusaxs.robust_curves import average_params as _average_params

__all__ = [
    "AVERAGES",
    "AveragedIntegrator",
    "average_key",
    "average_params",
    "average_title",
    "parse_percentile",
]


def average_params(args):
    """The run's averaging (saxsdog's parsed options) as a dict of plain values, None for the
    mean; ValueError for a value out of range."""
    return _average_params(
        args.average, args.clip_thres, args.clip_iter, args.percentile, args.error_model
    )
