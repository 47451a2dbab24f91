"""Matplotlib plot of one curve with its error bands (used by Integrator.plot and the tools)."""

from typing import Any

import numpy as np


def plot_curve(
    q: Any,
    intensity: Any,
    err: Any = None,
    std: Any = None,
    outputfile: str = "",
    start: int = 0,
    fig: Any = None,
    title: str = "",
    log: bool = True,
) -> Any:
    """Plot I(q) (q in nm^-1) with Poisson error (blue) and standard deviation (yellow) bands.

    Writes ``outputfile`` when given (format from its suffix), else shows a window.
    """
    sl = slice(int(start), None)
    q, intensity = np.asarray(q)[sl], np.asarray(intensity)[sl]
    if fig is None:
        if outputfile:  # no pyplot: works headless, whatever the default backend
            from matplotlib.figure import Figure

            fig = Figure(figsize=(8, 5))
        else:
            import matplotlib.pyplot as plt

            fig = plt.figure(figsize=(8, 5))
    ax = fig.gca()
    if std is not None:
        std = np.asarray(std)[sl]
        ax.fill_between(
            q,
            intensity - std,
            intensity + std,
            color="gold",
            alpha=0.5,
            label="standard deviation",
            linewidth=0,
        )
    if err is not None:
        err = np.asarray(err)[sl]
        ax.fill_between(
            q,
            intensity - err,
            intensity + err,
            color="tab:blue",
            alpha=0.4,
            label="Poisson error",
            linewidth=0,
        )
    ax.plot(q, intensity, color="k", linewidth=0.8, label="I(q)")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("q (nm$^{-1}$)")
    ax.set_ylabel("I (counts per pixel)")
    if title:
        ax.set_title(title)
    ax.legend()
    if outputfile:
        fig.savefig(outputfile)
    else:
        import matplotlib.pyplot as plt

        plt.show()
    return fig
