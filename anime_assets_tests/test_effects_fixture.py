"""Effect-layer fixtures: blend formulas, layer placement, exact recomposition
and the encoded effects clip."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from anime_assets_tests.fixtures import clips
from anime_assets_tests.fixtures import effects as E

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")

SIZE = (640, 360)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def eff_clip():
    gt = E.effects_clip(size=SIZE)
    return Path(gt.meta["path"]), gt


@pytest.fixture(scope="session")
def eff_decoded(eff_clip):
    path, _ = eff_clip
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _layer(colour, alpha, blend, shape=(2, 3)):
    rgba = np.zeros(shape + (4,), np.float32)
    rgba[..., :3] = colour
    rgba[..., 3] = alpha
    return E.EffectLayer(rgba, blend)


# ------------------------------------------------------------- formulas
@pytest.mark.parametrize("blend", E.BLEND_MODES)
def test_blend_formula(blend):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    rgba = rng.random((16, 16, 4)).astype(np.float32)
    rgba[0, :, 3] = 0.0  # alpha 0 row: unchanged in every mode
    layer = E.EffectLayer(rgba, blend)
    B = base.astype(np.float64) / 255
    C, a = rgba[..., :3].astype(np.float64), rgba[..., 3:].astype(np.float64)
    if blend == "normal":
        ref = B * (1 - a) + C * a
    elif blend == "add":
        ref = np.minimum(B + C * a, 1)
    else:
        ref = 1 - (1 - B) * (1 - C * a)
    got = E.composite(base, [layer])
    assert got.dtype == np.uint8 and got.shape == base.shape
    assert np.abs(got.astype(int) - np.rint(ref * 255).astype(int)).max() <= 1
    np.testing.assert_array_equal(got[0], base[0])
    if blend in ("add", "screen"):  # lightening modes never darken
        assert (got.astype(int) >= base.astype(int)).all()


def test_blend_special_cases():
    base = np.array([[[10, 128, 250]]], np.uint8)
    # normal, alpha 1: replaces; alpha 0.5: halfway
    assert E.composite(base, [_layer((1, 0, 0), 1.0, "normal", (1, 1))]).tolist() == [[[255, 0, 0]]]
    assert E.composite(base, [_layer((0, 0, 0), 0.5, "normal", (1, 1))]).tolist() == [[[5, 64, 125]]]
    # add saturates at 255 (clipped per layer)
    assert E.composite(base, [_layer((0.5, 0.5, 0.5), 1.0, "add", (1, 1))]).tolist() == [[[138, 255, 255]]]
    # screen with white at alpha 1 gives white, with black leaves the base
    assert E.composite(base, [_layer((1, 1, 1), 1.0, "screen", (1, 1))]).tolist() == [[[255, 255, 255]]]
    assert E.composite(base, [_layer((0, 0, 0), 1.0, "screen", (1, 1))]).tolist() == base.tolist()
    # order matters: normal over add != add over normal
    n = _layer((0, 0, 1), 0.5, "normal", (1, 1))
    a = _layer((1, 0, 0), 1.0, "add", (1, 1))
    assert E.composite(base, [n, a]).tolist() != E.composite(base, [a, n]).tolist()
    with pytest.raises(ValueError):
        E.EffectLayer(np.zeros((1, 1, 4), np.float32), "multiply")
    assert E.decompose_check(base, [E.opaque_layer(base)]) == math.inf


# ----------------------------------------------------- effect primitives
def test_glow_alpha():
    g = E.glow((200, 100), (80, 40), 30, (1.0, 0.5, 0.2), 0.7)
    assert g.blend == "add" and g.rgba.shape == (100, 200, 4) and g.rgba.dtype == np.float32
    a = g.alpha
    assert a[40, 80] == pytest.approx(0.7)
    yy, xx = np.mgrid[0:100, 0:200]
    r = np.hypot(xx - 80, yy - 40)
    assert a[r >= 30].max() == 0.0
    assert (np.diff(a[40, 80:111]) <= 1e-7).all()  # falls off monotonically
    assert g.bbox() is not None
    x0, y0, x1, y1 = g.bbox()
    assert 50 <= x0 and x1 <= 111 and 10 <= y0 and y1 <= 71
    np.testing.assert_allclose(g.rgba[40, 80, :3], 1.0, atol=1e-6)  # white-hot core
    np.testing.assert_allclose(g.rgba[40, 105, :3], (1.0, 0.5, 0.2), atol=0.01)


def test_aura_hugs_the_silhouette():
    mask = np.zeros((120, 160), np.float32)
    cv2.circle(mask, (80, 60), 30, 1.0, -1)
    au = E.aura(mask, (0.3, 0.6, 1.0), 8, 0.9)
    assert au.blend == "screen"
    a = au.alpha
    assert a[mask >= 1.0].max() == 0.0  # nothing on the character
    yy, xx = np.mgrid[0:120, 0:160]
    r = np.hypot(xx - 80, yy - 60)
    ring = (r > 32) & (r < 36)
    assert a[ring].min() > 0.3  # strong right outside the silhouette
    assert a[r > 30 + 8 * 4].max() == 0.0  # and gone far away
    # it moves with the mask
    au2 = E.aura(np.roll(mask, 20, axis=1), (0.3, 0.6, 1.0), 8, 0.9)
    np.testing.assert_allclose(au2.alpha[:, 40:140], a[:, 20:120], atol=1e-6)
    assert E.aura(mask, (1, 1, 1), 8, 0.9, blend="add").blend == "add"


def test_magic_circle_ring_and_rotation():
    size, c, R = (241, 241), (120.0, 120.0), 100.0
    m0 = E.magic_circle(size, c, R, 0.0, (0.5, 0.9, 1.0), 0.8)
    assert m0.blend == "normal" and m0.alpha.max() == pytest.approx(0.8, abs=1e-6)
    a = m0.alpha
    for th in np.linspace(0, 2 * np.pi, 16, endpoint=False):  # the outer ring everywhere
        x, y = 120 + R * np.cos(th), 120 + R * np.sin(th)
        assert a[int(round(y)) - 1 : int(round(y)) + 2, int(round(x)) - 1 : int(round(x)) + 2].max() > 0.5
    assert a[110:131, 110:131].max() == 0.0  # empty centre
    x0, y0, x1, y1 = m0.bbox()
    assert x0 >= 120 - R - 3 and x1 <= 120 + R + 4 and y0 >= 120 - R - 3 and y1 <= 120 + R + 4
    # rotation by angle: 90 degrees clockwise == rot90 of the unrotated circle
    m90 = E.magic_circle(size, c, R, np.pi / 2, (0.5, 0.9, 1.0), 0.8)
    rot = np.rot90(a, k=-1)
    assert np.abs(m90.alpha - rot).mean() < 0.1 * np.abs(m90.alpha - a).mean()
    assert np.corrcoef(m90.alpha.ravel(), rot.ravel())[0, 1] > 0.9
    # not rotation invariant: a small angle changes the drawing
    assert np.abs(E.magic_circle(size, c, R, 0.2, (1, 1, 1), 0.8).alpha - a).sum() > 100


# ------------------------------------------------- layers of the clip
FRAMES = [0, 11, 30, 47, 48, 70, 48 + E.FLASH_LOCAL, 119, 120, 140, 167]


@pytest.mark.parametrize("i", FRAMES)
def test_layers_recompose_frame(i):
    L = E.render_layers(i, SIZE)
    assert L.frame.shape == L.scene.shape == L.background.shape == (360, 640, 3)
    # the video frame is the scene with the effects composited on top (exact)
    np.testing.assert_array_equal(E.composite(L.scene, L.effects), L.frame)
    # the scene is the clips render of the spec (clips' generator unchanged)
    spec = E.effects_spec()
    ref, masks = clips.render_frame(spec, i, SIZE)
    if ref.min() == 255:  # flash frame of clips
        np.testing.assert_array_equal(L.frame, ref)
    else:
        np.testing.assert_array_equal(L.scene, ref)
        assert set(masks) == set(L.masks)
    A = sum(L.masks.values())
    # background plate: exactly the scene where no character covers a pixel
    np.testing.assert_array_equal(L.scene[A == 0], L.background[A == 0])
    assert (A > 0.5).sum() > 1000 and np.abs(L.scene.astype(int) - L.background.astype(int)).max() > 50
    # background + character + effects == frame within rounding
    ch = L.character
    assert ch.blend == "normal"
    np.testing.assert_allclose(ch.alpha, np.clip(A, 0, 1), atol=1e-6)
    scene2 = E.composite(L.background, [ch])
    d = np.abs(scene2.astype(int) - L.scene.astype(int))
    assert d.max() <= 1 and d[(A == 0) | (A >= 1)].max() == 0
    full = E.composite(L.background, [ch, *L.effects])
    assert np.abs(full.astype(int) - L.frame.astype(int)).max() <= 2
    assert E.decompose_check(L.frame, [ch, *L.effects], background=L.background) >= 50
    assert E.decompose_check(L.frame, [E.opaque_layer(L.background), ch, *L.effects]) >= 50
    # character colour is the sprite colour where it is opaque
    op = A >= 1
    np.testing.assert_array_equal(np.rint(ch.rgba[..., :3][op] * 255).astype(np.uint8), L.scene[op])
    # render_effects_frame is the same data
    rgb, m2, fx, bg = E.render_effects_frame(i, SIZE)
    np.testing.assert_array_equal(rgb, L.frame)
    np.testing.assert_array_equal(bg, L.background)
    assert set(m2) == set(L.masks) and len(fx) == len(L.effects)
    for info, layer in zip(L.effect_info, L.effects):
        assert info["blend"] == layer.blend and info["bbox"] == layer.bbox()
        assert info["type"] in E.EFFECT_TYPES


def test_effect_alpha_where_expected():
    # shot 0: the additive glow lies over the character
    L = E.render_layers(20, SIZE)
    (g,) = L.effects
    m = L.masks["s0c0"]
    assert g.blend == "add"
    assert (g.alpha[m >= 0.99] > 0.3).sum() > 500
    assert (L.frame.astype(int) >= L.scene.astype(int)).all()
    # shot 1: the aura hugs the moving character, nothing on her
    xs = []
    for i in (50, 80, 110):
        L = E.render_layers(i, SIZE)
        au = L.effects[0]
        m = L.masks["s1c0"]
        assert au.blend == "screen" and L.effect_info[0]["params"]["character"] == "s1c0"
        assert au.alpha[m >= 1.0].max() == 0.0 and au.alpha[m >= 0.999].max() < E.ALPHA_EPS
        near = cv2.dilate((m >= 0.5).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & (m < 0.01)
        assert au.alpha[near].mean() > 0.3
        far = cv2.dilate((m > 0).astype(np.uint8), np.ones((61, 61), np.uint8)) == 0
        assert au.alpha[far].max() == 0.0
        xs.append(au.bbox()[0])
    assert xs[0] < xs[1] < xs[2]  # moves with her (and the pan)
    # flash frame: the aura, then a full white normal layer on top
    L = E.render_layers(48 + E.FLASH_LOCAL, SIZE)
    assert [d["type"] for d in L.effect_info] == ["aura", "flash"]
    assert L.effects[1].blend == "normal" and L.effects[1].alpha.min() == 1.0
    assert L.frame.min() == 255
    # shot 2: the magic circle covers part of the character and part of the background
    L = E.render_layers(150, SIZE)
    circ, gl = L.effects
    assert [d["type"] for d in L.effect_info] == ["magic_circle", "glow"]
    assert circ.blend == "normal" and gl.blend == "add"
    m = L.masks["s2c0"]
    on = circ.alpha >= 0.5
    assert (on & (m >= 0.99)).sum() > 200 and (on & (m == 0)).sum() > 200
    assert not (circ.alpha[m >= 0.99] > 0).all()  # only partly over her
    # where the circle is opaque-ish over her, the frame shows the circle colour
    sel = (circ.alpha >= 0.84) & (m >= 0.99) & (gl.alpha == 0)
    assert sel.sum() > 50
    expect = L.scene[sel] * 0.15 + np.array([0.55, 0.9, 1.0]) * 255 * 0.85
    assert np.abs(L.frame[sel].astype(float) - expect).max() <= 4
    # the circle rotates
    a0, a1 = E.render_layers(125, SIZE).effects[0].alpha, E.render_layers(135, SIZE).effects[0].alpha
    assert np.abs(a0 - a1).sum() > 500


# ---------------------------------------------------------- the clip
def test_effects_clip_truth(eff_clip):
    path, gt = eff_clip
    assert path.exists() and path.parent == clips.cache_dir()
    assert gt.size == SIZE and gt.fps == 24.0 and gt.n_frames == E.n_frames() == len(gt.frames)
    assert 6 * 24 <= gt.n_frames <= 8 * 24
    assert gt.shots[0][0] == 0 and gt.shots[-1][1] == gt.n_frames
    assert [b["start"] for b in gt.boundaries] == [s for s, _ in gt.shots[1:]]
    assert clips.GroundTruth.load(path.with_suffix(".truth.json")) == gt
    types, blends = set(), set()
    for i, f in enumerate(gt.frames):
        assert f["effects"], i
        for e in f["effects"]:
            types.add(e["type"])
            blends.add(e["blend"])
            x0, y0, x1, y1 = e["bbox"]
            assert 0 <= x0 < x1 <= SIZE[0] and 0 <= y0 < y1 <= SIZE[1]
    assert types == set(E.EFFECT_TYPES) and blends == set(E.BLEND_MODES)
    flashes = [i for i, f in enumerate(gt.frames) if f["kind"] == "flash"]
    assert flashes == [48 + E.FLASH_LOCAL] and gt.frames[flashes[0]]["characters"] == []
    assert max(s.bg_scale for s in E.effects_spec().shots) >= 1.6
    pan = [f["camera"][0] for f in gt.frames[48:120] if "camera" in f]
    assert pan[-1] - pan[0] > 100
    # truth effect params re-render the exact layers with the public functions
    f = gt.frames[130]
    p = f["effects"][0]["params"]
    lay = E.magic_circle(SIZE, p["centre"], p["radius"], p["angle"], p["colour"], p["alpha"])
    np.testing.assert_array_equal(lay.rgba, E.render_layers(130, SIZE).effects[0].rgba)


def test_effects_clip_decodes_and_matches_render(eff_clip, eff_decoded):
    _, gt = eff_clip
    assert len(eff_decoded) == gt.n_frames
    assert eff_decoded[0].shape == (360, 640, 3)
    for i in sorted(set(FRAMES) | {5, 100, 160}):
        rgb, _, _, _ = E.render_effects_frame(i, SIZE)
        p = E.psnr(rgb, eff_decoded[i])
        assert p >= 30, (i, p)
    assert eff_decoded[48 + E.FLASH_LOCAL].min() >= 250


def test_effects_clip_is_cached(eff_clip):
    path, gt = eff_clip
    before = path.stat().st_mtime_ns
    gt2 = E.effects_clip(size=SIZE)
    assert path.stat().st_mtime_ns == before and gt2 == gt


def test_existing_fixtures_untouched():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("no git checkout")
    for p in ("samples/",):  # the effects module renders through clips, never rewrites its outputs
        r = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", p], cwd=REPO)
        assert r.returncode == 0, f"{p} changed"
