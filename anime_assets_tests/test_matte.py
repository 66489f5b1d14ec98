"""refine_alpha on the fixture's exact renders, with coarse inputs made from the truth."""

from __future__ import annotations

import dataclasses
import time
from functools import lru_cache

import cv2
import numpy as np
import pytest

from anime_assets.vision.matte import refine_alpha
from anime_assets.vision.metrics import boundary_f, iou
from anime_assets_tests.fixtures import clips

# (spec, frame): full body with a slow pan, medium shot, two characters, close-up, walk
FRAMES = [("sample", 50), ("sample", 130), ("sample", 300), ("cuts", 500), ("drawings", 320)]
_SPECS = {"sample": clips.sample_spec, "cuts": clips.cuts_spec, "drawings": clips.drawings_spec}


def _background_spec(spec: clips.ClipSpec) -> clips.ClipSpec:
    shots = tuple(dataclasses.replace(s, cels=tuple(clips.Cel(c.frames, ()) for c in s.cels)) for s in spec.shots)
    return clips.ClipSpec(spec.name + "_background", shots)


@lru_cache(maxsize=16)
def _frame(name: str, i: int, size=(640, 360)):
    spec = _SPECS[name]()
    rgb, masks = clips.render_frame(spec, i, size)
    bg, _ = clips.render_frame(_background_spec(spec), i, size)
    truth = np.clip(sum(masks.values()), 0.0, 1.0).astype(np.float32)
    return rgb, truth, bg


def _disk(r):
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _coarse(truth: np.ndarray, case: str) -> np.ndarray:
    H, W = truth.shape
    k = max(1, round(W / 640))
    if case == "lowres":  # like a 256-px segmenter, upsampled bilinearly
        small = cv2.resize(truth, (256, 144), interpolation=cv2.INTER_AREA)
        return np.clip(cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR), 0, 1)
    binary = (truth > 0.5).astype(np.uint8)
    if case == "dilated":
        return cv2.GaussianBlur(cv2.dilate(binary, _disk(4 * k)).astype(np.float32), (0, 0), 2.0 * k)
    if case == "eroded":
        return cv2.erode(binary, _disk(3 * k)).astype(np.float32)
    raise ValueError(case)


def _scores(case: str, with_background: bool = False):
    before, after = [], []
    for name, i in FRAMES:
        rgb, truth, bg = _frame(name, i)
        c = _coarse(truth, case)
        a = refine_alpha(rgb, c, background=bg if with_background else None)
        before.append((iou(c, truth), boundary_f(c, truth, tol_px=2)))
        after.append((iou(a, truth), boundary_f(a, truth, tol_px=2)))
    return np.array(before), np.array(after)


def test_output_contract():
    rgb, truth, _ = _frame("sample", 130)
    a = refine_alpha(rgb, _coarse(truth, "lowres"))
    assert a.shape == truth.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    soft = (a > 0.02) & (a < 0.98)
    assert 0 < np.count_nonzero(soft) < 0.05 * a.size  # anti-aliased edge, not a blur
    assert not refine_alpha(rgb, np.zeros_like(truth)).any()
    with pytest.raises(ValueError):
        refine_alpha(rgb, truth[:-1])
    with pytest.raises(TypeError):
        refine_alpha(rgb, truth, no_such_knob=1)


@pytest.mark.parametrize("case", ["dilated", "eroded"])
def test_snaps_offset_masks_to_the_silhouette(case):
    before, after = _scores(case)
    assert after[:, 0].mean() > before[:, 0].mean() + 0.025
    assert after[:, 1].mean() > before[:, 1].mean() + 0.4
    assert after[:, 0].min() >= 0.93 and after[:, 1].min() >= 0.6


def test_keeps_a_good_lowres_mask():
    before, after = _scores("lowres")
    assert after[:, 0].mean() >= before[:, 0].mean() - 0.01
    assert after[:, 1].mean() >= 0.92


def test_background_difference():
    _, after = _scores("lowres", with_background=True)
    assert after[:, 0].mean() >= 0.985 and after[:, 1].mean() >= 0.95


def test_full_hd_speed():
    rgb, truth, _ = _frame("sample", 130, (1920, 1080))
    c = _coarse(truth, "lowres")
    refine_alpha(rgb, c)
    t = min(_timed(refine_alpha, rgb, c) for _ in range(2))
    assert t < 0.3  # ~55 ms on one core of the dev machine; generous for CI
    a = refine_alpha(rgb, c)
    assert iou(a, truth) > 0.97


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0
