"""saxsdog --average: sigma-clipped or median curves instead of the mean (issue 27).

The run's Integrator is wrapped so that the frame pipeline's calls (``integrate_batch_error``,
``integrate_batch``) return :meth:`gpusaxs.Integrator.sigma_clip_batch` or
:meth:`~gpusaxs.Integrator.medfilt1d_batch` on the calibration's own bins. The parameters go
into every curve: the .chi title line and the NeXus file's ``option_*`` fields, and into the
curves' key, so that ``-r`` redoes a curve made with another average.
"""

import hashlib
import json

__all__ = ["AVERAGES", "AveragedIntegrator", "average_params", "average_key", "average_title"]

#: saxsdog's --average choices
AVERAGES = ("mean", "sigma-clip", "median")


def parse_percentile(text):
    """``"50"`` -> 50.0, ``"10,90"`` -> (10.0, 90.0); ValueError outside [0, 100]."""
    values = [float(v) for v in str(text).split(",")]
    if len(values) not in (1, 2) or not all(0.0 <= v <= 100.0 for v in values):
        raise ValueError(f"--percentile takes P or LO,HI in [0, 100], got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def average_params(args):
    """The run's averaging as a dict of plain values (None for the mean)."""
    if args.average == "mean":
        return None
    if args.average == "sigma-clip":
        return {
            "average": "sigma_clip",
            "thres": float(args.clip_thres),
            "max_iter": int(args.clip_iter),
            "error_model": args.error_model,
        }
    pct = parse_percentile(args.percentile)
    return {
        "average": "medfilt1d",
        "percentile": list(pct) if isinstance(pct, tuple) else pct,
        "error_model": args.error_model,
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
