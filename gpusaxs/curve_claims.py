"""One curve file per image: which image owns each curve path (saxsdog and saxsdogserver).

Two images whose curves would be the same file (``s1.tif`` and ``s1.edf``, ``s2.TIF`` and
``s2.tiff``: same stem, same folder) must not share it silently: the first image seen owns the
curve, every other one is an error (:func:`clash_message`).
"""

import threading


def clash_message(out, owner):
    """The error of an image whose curve ``out`` belongs to ``owner``."""
    return f"its curve {out} would overwrite the curve of {owner}; not integrated"


class CurveClaims:
    """Thread-safe map curve path -> owning image (the first image that claimed it)."""

    def __init__(self):
        self._owner = {}
        self._lock = threading.Lock()

    def claim(self, out, image):
        """None when ``image`` owns ``out`` (now or before), else the image that owns it."""
        with self._lock:
            owner = self._owner.setdefault(out, image)
        return None if owner == image else owner
