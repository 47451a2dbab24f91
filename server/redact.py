"""Server paths in answers: relative to the base folder, never absolute (docs/network.md, Paths).

:class:`PathRedactor` rewrites every string of an answer: an absolute path below the base folder
becomes relative to it (``/data/base/run1/x.tif`` -> ``run1/x.tif``, the base itself ``.``),
another root of the server (``-o OUTDIR`` outside the base) becomes its path relative to the
base (``../curves/...``).  Error messages built deep in the library are covered too.
"""

import os
import re

#: what may follow a path in a message: its end, white space, quotes, punctuation
_END = r"(?=$|[\s'\"),:;\]}])"

#: answer fields that hold numbers only (not walked)
NUMERIC_FIELDS = frozenset({"array"})


class PathRedactor:
    """Rewrite absolute server paths in strings and in answers (dicts/lists of them)."""

    def __init__(self, base, roots=()):
        base = os.path.abspath(base)
        pairs = {}
        for root in (base, *roots):
            if not root:
                continue
            for form in {os.path.abspath(root), os.path.realpath(root)}:
                if form == os.sep:
                    continue
                rel = os.path.relpath(form, base) if form != base else "."
                pairs[form] = "." if rel == "." else rel
        # longest first, so a root below another is rewritten by its own rule
        self._pairs = sorted(pairs.items(), key=lambda kv: -len(kv[0]))

    def text(self, s):
        """``s`` with each root (and anything below it) written relative to the base."""
        if os.sep not in s:
            return s
        for root, rel in self._pairs:
            if root not in s:
                continue
            below = "" if rel == "." else rel + os.sep
            s = s.replace(root + os.sep, below)
            # the root itself, not a longer name starting with it (/data/base2)
            s = re.sub(re.escape(root) + _END, lambda m, rel=rel: rel, s)
        return s

    def answer(self, obj):
        """A copy of ``obj`` (an answer) with every string rewritten by :meth:`text`."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {k: v if k in NUMERIC_FIELDS else self.answer(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.answer(v) for v in obj]
        return obj
