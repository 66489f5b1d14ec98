"""Effect layer extraction (anime_assets.vision.effects) against the effects fixture's exact truth.

Inputs: frames of `fixtures.effects` (raw renders, or the H.264 clip at crf 18), the TRUE
background, and the character coverage = sum of the true instance masks ("true"), the
same dilated by 3 px ("dil3"), or with the soft effects (glow/aura alpha > 0.1) added
("fx-in": a segmenter that labels glows as character). Truth alpha of a frame with
two layers is their combined coverage 1 - prod(1 - a_k); the expected blend mode is the
one of the layer with the most energy. Measured at 640x360 (every 6th frame + the flash),
asserted below with margin:

==========  ======  ===========  ===========  =========  ===========  =================
input       shot    alpha MAE    MAE on fx    blend      recomp PSNR  char err under fx
                    (frame, max) px (mean)    accuracy   (min, dB)    (levels; frame's)
==========  ======  ===========  ===========  =========  ===========  =================
raw true    0 glow  0.024        0.198        add (a)    52           33.0 (33.2)
raw true    1 aura  0.003        0.024        1.00       52           28.5 (34.0)
raw true    2 circ  0.012        0.121        1.00       52           20.4 (45.5)
raw dil3    0/1/2   .024/.011/.016  .20/.11/.17  (a)/1/1  55/55/50  33/34/35
raw fx-in   0/1/2   .025/.031/.014  .20/.30/.14  (a)/.08/1  52/50/52  33/34/20
raw +ref    0/1/2   .007/.001/.009  .05/.007/.10  1/1/1     56/56/58  0.2/0.3/0.1
h264 true   0/1/2   .028/.008/.022  .21/.06/.20  (a)/.5/1  35/36/38  33/37/29
h264 dil3   0/1/2   .029/.014/.022  .21/.11/.20  (a)/.25/1 36/36/38  33/38/29
==========  ======  ===========  ===========  =========  ===========  =================

(a) shot 0: the orb glow lies INSIDE the character's silhouette (only its rim leaks out in
the second half of the shot): without a reference of the character's colours it stays
in the character layer - detected ('add' on raw frames) where the rim leaks out, empty
before. With ``char_reference`` (true character colours here) it is recovered (MAE on fx
px 0.05, character colours within 0.2 levels).
"fx-in": the aura labelled as character stays in the character layer (only its faint
outer tail is seen, too weak to tell 'screen' from 'normal'): MAE on fx px 0.30.
"h264" compares decoded frames with the UNCOMPRESSED background (worst case: the codec's
smoothing of texture reads like a faint 'normal' layer, so add/screen is only half right
in shot 1; with backgrounds that went through the codec too, like a plate built from
decoded frames: shot 1 'screen' in 2/3 of the frames, MAE 0.004, PSNR >= 40).
Recomposition PSNR on H.264 is bounded by the codec noise against the clean background.
Speed (2 cores, perf_counter): 1280x720 12 ms without effect / 60 ms aura / 83 ms magic
circle / 0.21 s full-frame flash; 1920x1080 19 / 75 / 130 ms / 0.44 s (test_speed_1080p).
"""

from __future__ import annotations

import time
from functools import lru_cache

import cv2
import numpy as np
import pytest

from anime_assets.vision import metrics as M
from anime_assets.vision.effects import EffectEstimate, extract_effects, invert_effect
from anime_assets_tests.fixtures import effects as fx

SIZE = (640, 360)
SHOT0, SHOT1, SHOT2 = range(0, 48), range(48, 120), range(120, 168)
FLASH = fx.N_FRAMES[0] + fx.FLASH_LOCAL


@lru_cache(maxsize=None)
def _L(i: int, size=SIZE):
    return fx.render_layers(i, size)


def _coverage(L) -> np.ndarray:
    return np.clip(sum(L.masks.values()), 0.0, 1.0).astype(np.float32)


def _degraded(L, kind: str) -> np.ndarray:
    A = _coverage(L)
    if kind == "dil3":
        return cv2.dilate(A, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    if kind == "fx-in":
        soft = np.zeros_like(A)
        for info, e in zip(L.effect_info, L.effects):
            if info["type"] in ("glow", "aura"):
                soft = np.maximum(soft, (e.alpha > 0.1).astype(np.float32))
        return np.maximum(A, soft)
    return A


def _truth(L):
    a = np.zeros(L.frame.shape[:2], np.float32)
    for e in L.effects:
        a = 1.0 - (1.0 - a) * (1.0 - e.alpha)
    energy = [float((e.alpha * e.rgba[..., :3].max(axis=2)).sum()) for e in L.effects]
    return a, L.effects[int(np.argmax(energy))].blend


def _u8(x):
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _run(i, frame=None, kind="true", ref=False):
    L = _L(i)
    F = L.frame if frame is None else frame
    A = _degraded(L, kind)
    R = _u8(L.character.rgba[..., :3]) if ref else None
    est, crgb = extract_effects(F, L.background, A, char_reference=R)
    ta, tb = _truth(L)
    ea = est.rgba[..., 3]
    union = (ta > 1 / 255) | (ea > 1 / 255)
    rec = M.recompose(L.background, np.dstack([crgb, _u8(A)]), est.rgba, est.blend)
    return dict(est=est, crgb=crgb, mae=M.alpha_mae(ea, ta), mae_fx=M.alpha_mae(ea, ta, union),
                blend_ok=est.blend == tb, psnr=M.psnr(rec, F), truth_blend=tb, A=A, L=L)


# ------------------------------------------------------------------ basics
def test_no_effect_frame_gives_empty_layer():
    L = _L(10)
    A = _coverage(L)
    est, crgb = extract_effects(L.scene, L.background, A)  # the scene: characters, no effect
    assert isinstance(est, EffectEstimate)
    assert est.rgba.shape == L.scene.shape[:2] + (4,) and est.rgba.dtype == np.float32
    assert est.coverage == 0.0 and est.blend == "normal" and not est.rgba.any()
    full = A >= 0.999
    assert np.array_equal(crgb[full], L.scene[full])  # the character's colours are the frame's
    assert np.array_equal(crgb[A == 0], L.scene[A == 0])
    # partial coverage is un-premultiplied: the recomposition gives the frame back
    rec = M.recompose(L.background, np.dstack([crgb, _u8(A)]), est.rgba, est.blend)
    assert M.psnr(rec, L.scene) > 48


def test_nothing_at_all():
    L = _L(130)
    z = np.zeros(L.frame.shape[:2], np.float32)
    est, crgb = extract_effects(L.background, L.background, z)
    assert est.coverage == 0.0 and est.blend == "normal"
    assert np.array_equal(crgb, L.background)
    with pytest.raises(ValueError):
        extract_effects(L.background, L.background[:-1], z)


@pytest.mark.parametrize("blend", ["normal", "add", "screen"])
def test_invert_effect_round_trip(blend):
    rng = np.random.default_rng(0)
    S = rng.uniform(0.0, 0.4, (16, 16, 3)).astype(np.float32)
    rgba = rng.uniform(0.0, 1.0, (16, 16, 4)).astype(np.float32)
    rgba[..., 3] *= 0.6  # S + C a < 1: no clipping in 'add'
    F = fx.composite_float(_u8(S), [fx.EffectLayer(rgba, blend)])
    back = invert_effect(F, rgba, blend)
    assert np.abs(back - _u8(S) / 255.0).max() < 1e-3


# ------------------------------------------------- raw frames, true inputs
def test_additive_glow_shot0():
    """Glow over the character: detected 'add' where its rim leaks out of the silhouette."""
    for i in (30, 40):
        r = _run(i)
        assert r["est"].blend == "add" and r["est"].coverage > 0
        assert r["mae"] <= 0.04
        assert r["psnr"] >= 45
    r = _run(5)  # entirely inside the character: a documented blind spot, no junk
    assert r["mae"] <= 0.04 and r["psnr"] >= 45


def test_screen_aura_shot1():
    for i in (50, 66, 90, 112):
        r = _run(i)
        assert r["est"].blend == "screen", i
        assert r["mae"] <= 0.01 and r["mae_fx"] <= 0.05, (i, r["mae"], r["mae_fx"])
        assert r["psnr"] >= 45, (i, r["psnr"])
        # the aura lies outside the silhouette: almost none of it is put on the character
        inside = _coverage(r["L"]) >= 0.999
        assert r["est"].rgba[..., 3][inside].mean() < 0.02


def test_white_flash_is_one_normal_layer():
    r = _run(FLASH)
    est = r["est"]
    assert est.blend == "normal"
    assert est.coverage >= 0.95
    assert np.median(est.rgba[..., 3]) >= 0.98
    assert r["mae"] <= 0.02 and r["psnr"] >= 45


def test_magic_circle_shot2():
    for i in (124, 146, 166):
        r = _run(i)
        assert r["est"].blend == "normal"
        assert r["mae"] <= 0.025 and r["mae_fx"] <= 0.2, (i, r["mae"], r["mae_fx"])
        assert r["psnr"] >= 45, (i, r["psnr"])
    # the circle's lines over the character are found (its colour, high alpha)
    r = _run(146)
    L = r["L"]
    on_char_lines = (_coverage(L) >= 0.999) & (L.effects[0].alpha > 0.6)
    assert r["est"].rgba[..., 3][on_char_lines].mean() > 0.4


def test_character_colours_under_the_aura_are_cleaner():
    errs, base = [], []
    for i in (56, 96):
        r = _run(i)
        L = r["L"]
        ta, _ = _truth(L)
        under = (_coverage(L) > 0.5) & (ta > 0.05)
        X = L.character.rgba[..., :3] * 255.0
        errs.append(np.abs(r["crgb"].astype(np.float32) - X)[under].mean())
        base.append(np.abs(L.frame.astype(np.float32) - X)[under].mean())
    assert np.mean(errs) < 0.9 * np.mean(base)


def test_reference_recovers_glow_inside_character():
    for i in (6, 36):
        r = _run(i, ref=True)
        L = r["L"]
        ta, _ = _truth(L)
        assert r["est"].blend == "add"
        assert r["mae_fx"] <= 0.1 and r["psnr"] >= 45
        under = (_coverage(L) > 0.5) & (ta > 0.05)
        X = L.character.rgba[..., :3] * 255.0
        assert np.abs(r["crgb"].astype(np.float32) - X)[under].mean() < 2.0


# ------------------------------------------------------------ degraded inputs
@pytest.mark.parametrize("kind", ["dil3", "fx-in"])
def test_degraded_character_coverage(kind):
    for i in (40, 60, 100, 140):
        r = _run(i, kind=kind)
        assert r["mae"] <= 0.05, (kind, i, r["mae"])
        assert r["psnr"] >= 45, (kind, i, r["psnr"])


# --------------------------------------------------------------------- H.264
@lru_cache(maxsize=None)
def _decoded() -> tuple:
    from anime_assets.vision.decode import iter_frames, to_bgr

    gt = fx.effects_clip(size=SIZE)
    want = {30, 40, 60, 100, 140, 160, 12}
    out = {}
    for df in iter_frames(gt.meta["path"]):
        if df.index in want:
            out[df.index] = np.ascontiguousarray(to_bgr(df.frame)[..., ::-1])
    return tuple(sorted(out.items()))


def test_h264_frames():
    frames = dict(_decoded())
    for i, F in frames.items():
        r = _run(i, frame=F)
        assert r["mae"] <= 0.05, (i, r["mae"])
        assert r["psnr"] >= 33, (i, r["psnr"])
        if i in SHOT2:
            assert r["est"].blend == "normal"
    # a frame whose glow is inside the character: codec noise and the smear of the
    # character's edge do not make an effect
    assert _run(12, frame=frames[12])["est"].coverage < 0.002


# ---------------------------------------------------------------------- speed
def test_speed_1080p():
    L = fx.render_layers(60, (1920, 1080))
    A = _coverage(L)
    extract_effects(L.frame, L.background, A)
    t = time.perf_counter()
    for _ in range(2):
        est, _ = extract_effects(L.frame, L.background, A)
    dt = (time.perf_counter() - t) / 2
    assert est.blend == "screen"
    assert dt < 0.5, dt  # measured ~0.08 s on 2 cores; generous for loaded CI machines
