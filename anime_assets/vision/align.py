"""Global motion between two images: the shared pieces of the frame tracker and the shot plate."""

from __future__ import annotations

import numpy as np


def phase_peaks(a: np.ndarray, b: np.ndarray, k: int, win: np.ndarray, wa=None, wb=None) -> list:
    """Top-k peaks of the phase correlation: shifts d with a(u) ~ b(u + d). `wa`, `wb`: extra
    per-pixel weights (0 on pixels to ignore, e.g. characters). Several peaks, because a
    picture with two motions (a held character, a panning background) has one peak each."""
    A = np.fft.rfft2((a - a.mean()) * (win if wa is None else win * wa))
    B = np.fft.rfft2((b - b.mean()) * (win if wb is None else win * wb))
    R = B * np.conj(A)
    R /= np.abs(R) + 1e-6
    r = np.fft.irfft2(R, s=a.shape)
    # non-maximum suppression (3x3, wrap-around)
    m = r.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dx or dy:
                m = np.maximum(m, np.roll(r, (dy, dx), axis=(0, 1)))
    cand = np.flatnonzero((r >= m).ravel())
    cand = cand[np.argsort(r.ravel()[cand])[::-1][:k]]
    h, w = a.shape
    out = []
    for c in cand:
        y, x = divmod(int(c), w)
        out.append((float(x - w if x > w // 2 else x), float(y - h if y > h // 2 else y)))
    return out
