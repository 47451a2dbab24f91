"""Sets of image ids kept as sorted, disjoint half-open ranges ``[start, stop)``.

Memory grows with the number of gaps, not with the ids: a series of 10**7 images received in
order is one range, and the ids an announced ``number_of_images`` never delivered are the
complement, computed range by range (never listed id by id).
"""

from bisect import bisect_right

import numpy as np

#: ids are bounded to this (int64, the NeXus ``image_ids`` type); larger ones are refused
MAX_ID = 2**63 - 1


class IdRanges:
    """A set of non-negative integer ids as disjoint ranges; ``add`` is O(log n) when in order."""

    __slots__ = ("_starts", "_stops", "count")

    def __init__(self):
        self._starts = []
        self._stops = []
        self.count = 0  # ids in the set

    def __contains__(self, i):
        k = bisect_right(self._starts, i) - 1
        return k >= 0 and i < self._stops[k]

    def __len__(self):
        return self.count

    def add(self, i):
        """Add id ``i``; False if it was already there."""
        starts, stops = self._starts, self._stops
        if stops and stops[-1] == i:  # the common case: the next id in order
            stops[-1] = i + 1
            self.count += 1
            return True
        k = bisect_right(starts, i) - 1
        if k >= 0 and i < stops[k]:
            return False
        self.count += 1
        joins_left = k >= 0 and stops[k] == i
        joins_right = k + 1 < len(starts) and starts[k + 1] == i + 1
        if joins_left and joins_right:
            stops[k] = stops[k + 1]
            del starts[k + 1], stops[k + 1]
        elif joins_left:
            stops[k] = i + 1
        elif joins_right:
            starts[k + 1] = i
        else:
            starts.insert(k + 1, i)
            stops.insert(k + 1, i + 1)
        return True

    def ranges(self):
        return list(zip(self._starts, self._stops, strict=True))

    @property
    def n_ranges(self):
        return len(self._starts)

    def max(self):
        """The largest id, or None when empty."""
        return self._stops[-1] - 1 if self._stops else None

    def gaps(self, stop, limit=None):
        """Ranges of ids in ``[0, stop)`` not in the set, the first ``limit`` of them (all: None).

        Returns (ranges, total count of missing ids).
        """
        out, missing, prev = [], 0, 0
        for a, b in zip(self._starts, self._stops, strict=True):
            if a >= stop:
                break
            if a > prev:
                missing += a - prev
                if limit is None or len(out) < limit:
                    out.append((prev, a))
            prev = max(prev, b)
        if stop > prev:
            missing += stop - prev
            if limit is None or len(out) < limit:
                out.append((prev, stop))
        return out, missing

    @classmethod
    def from_ids(cls, ids):
        """The set of the ids in an integer array (any order, repeats allowed)."""
        out = cls()
        u = np.unique(np.asarray(ids, dtype=np.int64))
        u = u[u >= 0]
        if u.size:
            cut = np.flatnonzero(np.diff(u) != 1) + 1
            out._starts = [int(v) for v in u[np.r_[0, cut]]]
            out._stops = [int(v) + 1 for v in u[np.r_[cut - 1, u.size - 1]]]
            out.count = int(u.size)
        return out
