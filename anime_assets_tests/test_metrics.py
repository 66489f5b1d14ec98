"""anime_assets.vision.metrics: hand-made cases whose values are computed by hand, and
`recompose` against the fixtures' `composite` on rendered effect frames."""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np
import pytest

from anime_assets.vision import metrics as M
from anime_assets_tests.fixtures import effects as fx


def _square(x0, y0, s=10, shape=(40, 40)):
    m = np.zeros(shape, bool)
    m[y0:y0 + s, x0:x0 + s] = True
    return m


def _disc(cx, cy, r, shape=(64, 64)):
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, (cx, cy), r, 1, -1)
    return m.astype(bool)


# ------------------------------------------------------------------- iou
def test_iou_shifted_square():
    # 10x10 squares shifted by 2 px: intersection 8*10 = 80, union 200 - 80 = 120
    assert M.iou(_square(5, 5), _square(7, 5)) == pytest.approx(80 / 120)
    # shifted diagonally by (2, 3): 8*7 = 56, union 200 - 56 = 144
    assert M.iou(_square(5, 5), _square(7, 8)) == pytest.approx(56 / 144)


def test_iou_edge_cases_and_float_threshold():
    e = np.zeros((8, 8), bool)
    assert M.iou(e, e) == 1.0
    assert M.iou(e, _square(0, 0, 4, (8, 8))) == 0.0
    a = _square(1, 1, 4, (8, 8)).astype(np.float32) * 0.6  # 0.6 > 0.5: the square
    assert M.iou(a, _square(1, 1, 4, (8, 8))) == 1.0
    assert M.iou(a, _square(1, 1, 4, (8, 8)), threshold=0.7) == 0.0  # thresholded away -> 0 / 16
    with pytest.raises(ValueError):
        M.iou(np.zeros((2, 2)), np.zeros((3, 3)))


# ------------------------------------------------------------ boundary F
def test_boundary_f_shifted_disc():
    a, b = _disc(30, 30, 15), _disc(31, 30, 15)
    assert M.boundary_f(a, a, tol_px=0) == 1.0
    assert M.boundary_f(a, b, tol_px=2) == 1.0
    assert M.boundary_f(a, b, tol_px=1) == 1.0  # every boundary pixel moved by at most 1 px
    f0 = M.boundary_f(a, b, tol_px=0)
    assert 0.0 < f0 < 1.0


def test_boundary_f_edge_cases():
    e = np.zeros((20, 20), bool)
    assert M.boundary_f(e, e) == 1.0
    assert M.boundary_f(e, _square(2, 2, 5, (20, 20))) == 0.0
    # far apart squares: no boundary pixel within tolerance
    assert M.boundary_f(_square(0, 0, 5, (40, 40)), _square(30, 30, 5, (40, 40))) == 0.0


def test_boundary_f_precision_recall_by_hand():
    # a 6x6 square vs the same square plus a far-away single pixel: the extra pixel is one
    # more predicted boundary pixel that matches nothing -> P = 20/21, R = 1
    t = _square(2, 2, 6, (30, 30))
    p = t.copy()
    p[25, 25] = True
    P, R = 20 / 21, 1.0
    assert M.boundary_f(p, t, tol_px=2) == pytest.approx(2 * P * R / (P + R))


# ------------------------------------------------------------- alpha/psnr
def test_alpha_mae():
    a = np.zeros((4, 4), np.float32)
    b = np.zeros((4, 4), np.float32)
    b[0, :] = 0.5  # 4 of 16 pixels off by 0.5
    assert M.alpha_mae(a, b) == pytest.approx(4 * 0.5 / 16)
    r = np.zeros((4, 4), bool)
    r[0, :2] = True
    r[1, :2] = True
    assert M.alpha_mae(a, b, r) == pytest.approx(0.25)
    assert M.alpha_mae(a, b, np.zeros((4, 4), bool)) == 0.0


def test_psnr():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert M.psnr(a, a) == math.inf
    b = a.copy()
    b += 1  # mse 1 -> 20 log10(255)
    assert M.psnr(a, b) == pytest.approx(20 * math.log10(255.0))
    c = a.copy()
    c[:4] = 110  # half the pixels off by 10 -> mse 50 overall, 100 in the top half
    top = np.zeros((8, 8), bool)
    top[:4] = True
    assert M.psnr(a, c) == pytest.approx(10 * math.log10(255.0 ** 2 / 50))
    assert M.psnr(a, c, top) == pytest.approx(10 * math.log10(255.0 ** 2 / 100))
    assert M.psnr(a, c, ~top) == math.inf


def test_flicker_iou():
    ms = [_square(5, 5), _square(5, 5), _square(7, 5)]
    assert M.flicker_iou(ms) == pytest.approx([1.0, 80 / 120])
    assert M.flicker_iou(ms[:1]) == []


# -------------------------------------------------------------- recompose
@lru_cache(maxsize=None)
def _layers(i):
    return fx.render_layers(i, (320, 180))


FLASH = fx.N_FRAMES[0] + fx.FLASH_LOCAL  # the white flash frame of shot 1


@pytest.mark.parametrize("i", [10, 60])  # add glow over the character; screen aura
def test_recompose_matches_fixture_composite(i):
    L = _layers(i)
    e = L.effects[0]
    got = M.recompose(L.background, L.character.rgba, e.rgba, e.blend)
    ref = fx.composite(L.background, [L.character, e])
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    # and reproduces the rendered frame within rounding
    assert np.abs(got.astype(int) - L.frame.astype(int)).max() <= 2
    # uint8 character layer (what the pipeline writes)
    c8 = np.clip(np.rint(L.character.rgba * 255), 0, 255).astype(np.uint8)
    got8 = M.recompose(L.background, c8, e.rgba, e.blend)
    assert M.psnr(got8, L.frame) > 40


@pytest.mark.parametrize("mode", ["normal", "add", "screen"])
def test_recompose_each_mode_matches_composite(mode):
    L = _layers(130)  # lecture hall: magic circle
    circle = L.effects[0]
    layer = fx.EffectLayer(circle.rgba, mode)
    got = M.recompose(L.background, L.character.rgba, circle.rgba, mode)
    ref = fx.composite(L.background, [L.character, layer])
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


def test_recompose_flash_and_empty_layers():
    L = _layers(FLASH)
    white = L.effects[-1]
    got = M.recompose(L.background, L.character.rgba, white.rgba, "normal")
    assert (got == 255).all()
    none = np.zeros(L.frame.shape[:2] + (4,), np.float32)
    empty = M.recompose(L.background, L.character.rgba, none, "add")
    assert np.abs(empty.astype(int) - L.scene.astype(int)).max() <= 1
    assert np.array_equal(M.recompose(L.background, None, None, "normal"), L.background)
    with pytest.raises(ValueError):
        M.recompose(L.background, None, none, "multiply")


# -------------------------------------------------------------- previews
def test_checkerboard_and_preview():
    cb = M.checkerboard(32, 48, cell=16)
    assert cb.shape == (32, 48, 3) and cb.dtype == np.uint8
    assert cb[0, 0, 0] == 255 and cb[0, 16, 0] == 204 and cb[16, 0, 0] == 204 and cb[16, 16, 0] == 255
    rgba = np.zeros((32, 48, 4), np.uint8)
    assert np.array_equal(M.over_checkerboard(rgba), cb)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    out = M.over_checkerboard(rgba)
    assert (out[..., 0] == 255).all() and (out[..., 1:] == 0).all()
    half = np.zeros((32, 48, 4), np.float32)
    half[..., 3] = 0.5  # black at 50 %: half the checkerboard's value
    assert np.abs(M.over_checkerboard(half).astype(int) - cb.astype(int) // 2).max() <= 1
