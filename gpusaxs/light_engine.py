"""Transitional re-export: the bincount engine lives in cpu_fallback/light.py (issue 24).

clients/saxsdog.py still imports it from here; once saxsdog takes its engine from
gpusaxs.engines.make_engine(..., light=True), this module goes.
"""

from gpusaxs.cpu_fallback.light import BincountEngine

__all__ = ["BincountEngine"]
