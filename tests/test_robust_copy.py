"""The sigma-clipping kernel's copy of a stack into the bin-major order of a matrix's entries
(cpu_fallback.robust_kernel.bin_order_copy), against NumPy's indexing of the same stack."""

import numpy as np
import pytest

from cpu_fallback import robust_kernel


def scattered_matrix(n_pixels, seed):
    """pixel_ptr of 0-3 entries a pixel (long runs of pixels with none, as a mask makes) and a
    random place of each entry in the bin-major order."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, n_pixels)
    counts[1000:3000] = 0  # several whole tiles with no entry
    pixel_ptr = np.zeros(n_pixels + 1, dtype=np.int64)
    np.cumsum(counts, out=pixel_ptr[1:])
    slot = rng.permutation(int(pixel_ptr[-1])).astype(np.int32)
    pixel_of = np.repeat(np.arange(n_pixels), counts)
    return pixel_ptr, slot, pixel_of


@pytest.mark.parametrize("n_frames", [1, 5, 32, 48])
@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.float32])
def test_copy_places_every_entrys_frames(n_frames, dtype, monkeypatch):
    """Every entry's values of every frame land in its row; small tiles, so that a run of
    pixels has many of them, with a partial last one."""
    monkeypatch.setattr(robust_kernel, "TILE_BYTES", 4096)
    n_pixels = 10_007
    pixel_ptr, slot, pixel_of = scattered_matrix(n_pixels, n_frames)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 60_000, (n_frames, n_pixels)).astype(dtype)
    tile, pad, starts = robust_kernel.copy_plan(pixel_ptr, n_frames, frames.itemsize, 3)
    assert tile * n_frames * frames.itemsize <= max(4096, 16 * n_frames * frames.itemsize)
    assert starts[0] == 0 and starts[-1] == n_pixels and np.all(np.diff(starts) > 0)
    assert np.all(starts[:-1] % tile == 0)
    out = np.full((slot.size, n_frames), 7, dtype=dtype)
    robust_kernel.bin_order_copy(frames, pixel_ptr, slot, tile, pad, starts, out)
    expected = np.empty_like(out)
    expected[slot] = frames[:, pixel_of].T
    np.testing.assert_array_equal(out, expected)


def test_plan_balances_entries_over_the_steps():
    """No parallel step holds more than its share of the entries (16 steps for 2 threads) plus
    a tile's worth, however the entries crowd on the detector."""
    n_pixels = 1_000_000
    counts = np.zeros(n_pixels, dtype=np.int64)
    counts[600_000:] = 2  # all entries in the last 40 % of the pixels
    pixel_ptr = np.zeros(n_pixels + 1, dtype=np.int64)
    np.cumsum(counts, out=pixel_ptr[1:])
    tile, _, starts = robust_kernel.copy_plan(pixel_ptr, 32, 4, 2)
    per_step = np.diff(pixel_ptr[starts])
    assert per_step.sum() == pixel_ptr[-1]
    assert np.count_nonzero(per_step) >= 15
    assert per_step.max() <= pixel_ptr[-1] / 16 + 2 * tile * 2
