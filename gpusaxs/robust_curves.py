"""Sigma-clipped or median curves instead of the mean, for the tools (issue 27): saxsdog's
and saxsdogserver's ``--average``.

An Integrator is wrapped so that the frame pipeline's calls (``integrate_batch_error``,
``integrate_batch``) return :meth:`gpusaxs.Integrator.sigma_clip_batch` or
:meth:`~gpusaxs.Integrator.medfilt1d_batch` on the calibration's own bins. The parameters go
into every curve: the .chi title line (:func:`average_title`), the NeXus file's ``option_*``
fields, and the curves' key (:func:`average_key`), so that a resumed run redoes a curve made
with another average.
"""

import hashlib
import json

__all__ = [
    "AVERAGES",
    "AveragedIntegrator",
    "add_average_arguments",
    "average_key",
    "average_params",
    "average_title",
    "parse_percentile",
]

#: the --average choices of saxsdog and saxsdogserver
AVERAGES = ("mean", "sigma-clip", "median")


def parse_percentile(text):
    """``"50"`` -> 50.0, ``"10,90"`` -> (10.0, 90.0); ValueError outside [0, 100]."""
    values = [float(v) for v in str(text).split(",")]
    if len(values) not in (1, 2) or not all(0.0 <= v <= 100.0 for v in values):
        raise ValueError(f"--percentile takes P or LO,HI in [0, 100], got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def average_params(average, clip_thres=5.0, clip_iter=5, percentile="50", error_model="poisson"):
    """The averaging as a dict of plain values, None for the mean.

    average: one of :data:`AVERAGES`; clip_thres (std) and clip_iter: sigma clipping's bound
    and passes; percentile: ``"P"`` or ``"LO,HI"`` (the median filter); error_model:
    "poisson", "azimuthal" or "hybrid". ValueError for a value out of range.
    """
    if average not in AVERAGES:
        raise ValueError(f"--average must be one of {', '.join(AVERAGES)}, got {average!r}")
    if average == "mean":
        return None
    if average == "sigma-clip":
        if not float(clip_thres) > 0 or int(clip_iter) < 1:
            raise ValueError("--clip-thres must be > 0 and --clip-iter at least 1")
        return {
            "average": "sigma_clip",
            "thres": float(clip_thres),
            "max_iter": int(clip_iter),
            "error_model": error_model,
        }
    pct = parse_percentile(percentile)
    return {
        "average": "medfilt1d",
        "percentile": list(pct) if isinstance(pct, tuple) else pct,
        "error_model": error_model,
    }


def average_key(key, params):
    """The curves' key: the calibration key, combined with the averaging when not the mean."""
    if params is None or key is None:
        return key
    text = f"{key}:{json.dumps(params, sort_keys=True)}"
    return hashlib.sha256(text.encode()).hexdigest()


def average_title(params):
    """The parameters as the .chi title line shows them, e.g. ``average=sigma_clip thres=5.0``."""
    if params is None:
        return ""
    return " ".join(
        f"{k}={json.dumps(v, separators=(',', ':'))}" if not isinstance(v, str) else f"{k}={v}"
        for k, v in params.items()
    )


class AveragedIntegrator:
    """An Integrator whose batch calls give the robust average of ``params``; every other
    attribute (q, matrix, matrix_key, engine, ...) is the Integrator's."""

    def __init__(self, integrator, params):
        self._integrator = integrator
        self.params = dict(params)

    def __getattr__(self, name):
        return getattr(self._integrator, name)

    @property
    def matrix_key(self):
        """The curves' key: the matrix key combined with the averaging (:func:`average_key`)."""
        return average_key(self._integrator.matrix_key, self.params)

    @property
    def curve_title(self):
        """The averaging as the .chi title line shows it (:func:`average_title`)."""
        return average_title(self.params)

    def _run(self, stack):
        p = self.params
        if p["average"] == "sigma_clip":
            return self._integrator.sigma_clip_batch(
                stack, thres=p["thres"], max_iter=p["max_iter"], error_model=p["error_model"]
            )
        pct = p["percentile"]
        return self._integrator.medfilt1d_batch(
            stack,
            percentile=tuple(pct) if isinstance(pct, list) else pct,
            error_model=p["error_model"],
        )

    def integrate_batch_error(self, stack, std=False):
        """(intensity, std or None, sigma), each (B, n_bins), of the robust average."""
        res = self._run(stack)
        return res.intensity, (res.std if std else None), res.sigma

    def integrate_batch(self, stack):
        """The robust average (B, n_bins)."""
        return self._run(stack).intensity


def add_average_arguments(p):
    """saxsdog's and saxsdogserver's options of the averaging: --average, --clip-thres,
    --clip-iter, --percentile, --error-model (read back by :func:`average_params`)."""
    p.add_argument(
        "--average",
        choices=AVERAGES,
        default="mean",
        help="the curve: the mean per bin (default), sigma-clip (pyFAI's sigma_clip_ng) or "
        "median (weighted percentile, pyFAI's medfilt1d_ng); parameters recorded in each curve",
    )
    p.add_argument(
        "--clip-thres",
        metavar="T",
        type=float,
        default=5.0,
        help="--average sigma-clip: drop values beyond T std of the mean (default 5)",
    )
    p.add_argument(
        "--clip-iter",
        metavar="N",
        type=int,
        default=5,
        help="--average sigma-clip: at most N clipping passes (default 5)",
    )
    p.add_argument(
        "--percentile",
        metavar="P|LO,HI",
        default="50",
        help="--average median: the percentile (default 50), or the mean between LO,HI",
    )
    p.add_argument(
        "--error-model",
        choices=("poisson", "azimuthal", "hybrid"),
        default="poisson",
        help="--average sigma-clip / median: the error model (default poisson)",
    )
