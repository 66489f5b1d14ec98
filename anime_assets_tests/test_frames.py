"""Clean-frame selection (anime_assets.vision.frames) on real fixture clips with exact truth.

The clips are encoded H.264 videos (anime_assets_tests/fixtures/clips.py); the tracker runs
on the decoder's analysis luma exactly as in the pipeline, the final pass per truth shot.
Speed is measured by bench/bench_clean_frames.py, not here.
"""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("av")

from anime_assets.vision.decode import read_analysis, read_frames_bgr  # noqa: E402
from anime_assets.vision.shots import transition_frames  # noqa: E402
from anime_assets.vision.frames import (  # noqa: E402
    REASONS,
    CleanFrameParams,
    DrawingTracker,
    FrameDecision,
    ShotSelection,
    block_change,
    exposure_class,
    line_art_sharpness,
    same_drawing,
    select_shot_frames,
)
from anime_assets_tests.fixtures import clips  # noqa: E402

NAMES = ["cuts", "drawings", "sample"]


# ----------------------------------------------------------------------------- helpers


def _run(path, truth):
    a = read_analysis(path)
    tr = DrawingTracker()
    decisions = [tr.push(i, g) for i, g in enumerate(a.gray)]
    cands = [i for i, d in enumerate(decisions) if d.candidate]
    quality = {}
    for i, bgr in read_frames_bgr(path, cands).items():
        g = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        quality[i] = line_art_sharpness(cv2.resize(g, (g.shape[1] // 2, g.shape[0] // 2),
                                                   interpolation=cv2.INTER_AREA))
    luma = a.gray.reshape(len(a.gray), -1).mean(axis=1)
    trans = transition_frames(truth.boundaries)
    sels = {}
    for k, (s, e) in enumerate(truth.shots):
        sig = {i: a.gray[i] for i in cands if s <= i < e}
        sels[k] = select_shot_frames(np.arange(s, e), decisions[s:e], sig, quality, luma[s:e], trans)
    kept = sorted(f for sel in sels.values() for f in sel.kept)
    return dict(analysis=a, decisions=decisions, candidates=cands, selections=sels, kept=kept)


def _drawing(truth, i):
    f = truth.frames[i]
    return f["drawing"] if f["kind"] == "normal" else None


def _shot_of(truth, label_part: str, name_clip: str = "") -> int:
    labels = truth.meta["shot_labels"]
    hits = [k for k, lab in enumerate(labels) if label_part in lab]
    assert hits, f"no shot labelled {label_part!r} in {labels}"
    return hits[0]


@pytest.fixture(scope="module")
def runs():
    std = clips.standard_clips(clips.cache_dir(), size=(640, 360))
    return {name: (std[name][1], _run(*std[name])) for name in NAMES}


# ----------------------------------------------------------------- targets on fixture clips


@pytest.mark.parametrize("name", NAMES)
def test_no_drawing_lost_and_few_repeats(runs, name):
    truth, r = runs[name]
    drawings = {_drawing(truth, i) for i in range(truth.n_frames)} - {None}
    kept_d = [_drawing(truth, i) for i in r["kept"]]
    assert drawings - set(kept_d) == set(), "lost drawings"
    real = [d for d in kept_d if d is not None]
    repeats = len(real) - len(set(real))
    assert repeats <= 0.10 * len(r["kept"]), f"{repeats} repeats among {len(r['kept'])} kept"
    junk = [i for i in r["kept"] if _drawing(truth, i) is None]
    assert junk == [], f"kept flash / impact / black / transition frames {junk}"


@pytest.mark.parametrize("name", NAMES)
def test_every_frame_accounted_for(runs, name):
    truth, r = runs[name]
    cands = set(r["candidates"])
    for k, (s, e) in enumerate(truth.shots):
        sel = r["selections"][k]
        assert isinstance(sel, ShotSelection)
        kept, dropped = set(sel.kept), set(sel.dropped)
        assert kept.isdisjoint(dropped)
        assert kept | dropped == set(range(s, e))
        assert kept <= cands, "only online candidates have a written image"
        assert all(reason in REASONS for reason, _ in sel.dropped.values())
        if kept:
            assert 1 <= len(sel.keyframes) <= 3 and set(sel.keyframes) <= kept
        # a shot with any visible drawing keeps at least one frame
        if any(_drawing(truth, i) is not None for i in range(s, e)):
            assert kept


def test_online_candidates_are_few(runs):
    """Candidates are written at full resolution: about one per distinct drawing (plus
    transition / flash frames, which only the final pass can recognise)."""
    for name in NAMES:
        truth, r = runs[name]
        drawings = len({_drawing(truth, i) for i in range(truth.n_frames)} - {None})
        other = sum(1 for f in truth.frames if f["kind"] in ("transition", "impact"))
        assert len(r["candidates"]) <= 1.15 * drawings + other + 2, name


def test_pans_over_a_still_drawing_are_one_drawing(runs):
    truth, r = runs["drawings"]
    scale = r["analysis"].gray.shape[2] / truth.size[0]
    for label in ("slow pan", "fast diagonal pan"):
        k = _shot_of(truth, label)
        s, e = truth.shots[k]
        sel = r["selections"][k]
        assert len(sel.kept) == 1, (label, sel.kept)
        pans = [i for i in range(s, e) if sel.dropped.get(i, ("",))[0] == "pan"]
        assert len(pans) >= 0.9 * (e - s - 1), (label, len(pans), e - s)
        # the measured camera translation follows the true camera (analysis pixels)
        errs = []
        for i in pans:
            d = r["decisions"][i]
            cam = np.subtract(truth.frames[i]["camera"], truth.frames[d.ref]["camera"]) * scale
            errs.append(np.hypot(d.shift[0] + cam[0], d.shift[1] + cam[1]))
        assert np.median(errs) < 0.15 and max(errs) < 0.5, (label, np.median(errs), max(errs))


def test_moving_character_during_pan_is_every_drawing(runs):
    truth, r = runs["drawings"]
    k = _shot_of(truth, "character moves 5 px/frame")
    s, e = truth.shots[k]
    kept = r["selections"][k].kept
    assert sorted(_drawing(truth, i) for i in kept) == sorted({_drawing(truth, i) for i in range(s, e)})


def test_mouth_only_changes_are_kept(runs):
    """On twos: a new mouth / eyes every 2 frames, everything else identical."""
    truth, r = runs["drawings"]
    for k in (0, _shot_of(truth, "two characters")):
        s, e = truth.shots[k]
        want = {_drawing(truth, i) for i in range(s, e)} - {None}
        got = [_drawing(truth, i) for i in r["selections"][k].kept]
        assert set(got) == want and len(got) == len(want)
    # the weakest of them are tiny: a few analysis pixels
    a = r["analysis"].gray
    changes = []
    for i in range(truth.shots[0][0] + 1, truth.shots[0][1]):
        if _drawing(truth, i) != _drawing(truth, i - 1):
            changes.append(block_change(a[i - 1], a[i]))
    assert min(changes) < 25


def test_a_b_a_return_is_a_repeat(runs):
    """Shot 0 of 'drawings' ends: 48-frame hold of A, 12 frames B (surprised), 12 frames A."""
    truth, r = runs["drawings"]
    s, e = truth.shots[0]
    sel = r["selections"][0]
    last_a = e - 12
    assert _drawing(truth, last_a) == _drawing(truth, last_a - 13)  # truth: A again
    assert last_a not in sel.kept
    reason, ref = sel.dropped[last_a]
    assert reason == "repeat"
    assert ref in sel.kept and _drawing(truth, ref) == _drawing(truth, last_a)
    # and the rest of the A run holds it
    for i in range(last_a + 1, e):
        assert sel.dropped[i][0] in ("hold", "repeat") and sel.dropped[i][1] == ref


def test_black_white_flash_impact_and_transitions(runs):
    truth, r = runs["sample"]
    dec = r["decisions"]
    trans = transition_frames(truth.boundaries)
    seen = set()
    for i, f in enumerate(truth.frames):
        sel = r["selections"][f["shot"]]
        reason = sel.dropped.get(i, ("kept",))[0]
        if f["kind"] == "black":
            assert dec[i].reason == "black" and not dec[i].candidate
        if f["kind"] == "flash":  # pure white frame inside a shot
            assert dec[i].reason == "white" and reason == "white"
        if f["kind"] == "impact":
            assert reason == "flash", (i, reason)
        if i in trans:
            assert reason == "transition"
        seen.add(f["kind"])
    assert {"black", "flash", "impact", "transition"} <= seen


# --------------------------------------------------------------------------- unit level


def _line_art(n_shapes: int, size=(540, 960), seed=0, contrast=1.0) -> np.ndarray:
    """Flat-colour cel shapes with dark anti-aliased outlines, as luma."""
    rng = np.random.default_rng(seed)
    img = np.full(size + (3,), (205, 190, 170), np.uint8)
    h, w = size
    for _ in range(n_shapes):
        c = (int(rng.integers(40, 250)), int(rng.integers(40, 250)), int(rng.integers(40, 250)))
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(15, 90)), int(rng.integers(15, 90)))
        ang = float(rng.uniform(0, 180))
        cv2.ellipse(img, center, axes, ang, 0, 360, c, -1, cv2.LINE_AA)
        cv2.ellipse(img, center, axes, ang, 0, 360, (25, 25, 30), 2, cv2.LINE_AA)
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return np.clip(128 + (g - 128) * contrast, 0, 255).astype(np.uint8)


def _motion_blur(g: np.ndarray, n: int = 9) -> np.ndarray:
    k = np.zeros((n, n), np.float32)
    k[n // 2, :] = 1.0 / n
    return cv2.filter2D(g, -1, k)


def _lapvar(g: np.ndarray) -> float:
    return float(cv2.Laplacian(g, cv2.CV_64F).var())


def test_sharpness_ranks_blur_below_sharp_whatever_the_amount_of_line_art():
    sparse, dense = _line_art(4, seed=1), _line_art(150, seed=2)
    sharp = [sparse, dense, _line_art(40, seed=3, contrast=0.35)]  # low-contrast art too
    blurred = []
    for g in sharp:
        blurred += [cv2.GaussianBlur(g, (0, 0), 1.5), cv2.GaussianBlur(g, (0, 0), 3.0), _motion_blur(g)]
    s_sharp = [line_art_sharpness(g) for g in sharp]
    s_blur = [line_art_sharpness(g) for g in blurred]
    assert all(0.0 <= v <= 1.0 for v in s_sharp + s_blur)
    assert max(s_blur) < min(s_sharp), (s_sharp, s_blur)
    # pairwise: blurring always lowers it, more blur lowers it more
    for i, g in enumerate(sharp):
        b15, b30, mb = s_blur[3 * i:3 * i + 3]
        assert b30 < b15 < s_sharp[i] and mb < s_sharp[i]
    # contrast-invariant
    assert abs(line_art_sharpness(_line_art(40, seed=3, contrast=0.35))
               - line_art_sharpness(_line_art(40, seed=3))) < 0.05
    # the plain Laplacian variance fails: a blurred busy frame beats a sharp sparse one
    faint = _line_art(4, seed=1, contrast=0.35)
    assert _lapvar(_motion_blur(dense)) > _lapvar(sparse)
    assert line_art_sharpness(_motion_blur(dense)) < line_art_sharpness(sparse)
    assert _lapvar(cv2.GaussianBlur(dense, (0, 0), 1.5)) > _lapvar(faint)
    assert line_art_sharpness(cv2.GaussianBlur(dense, (0, 0), 1.5)) < line_art_sharpness(faint)
    # no edges at all
    assert line_art_sharpness(np.full((540, 960), 128, np.uint8)) == 0.0


def test_exposure_class():
    assert exposure_class(np.zeros((144, 256), np.uint8)) == "black"
    assert exposure_class(np.full((144, 256), 12, np.uint8)) == "black"
    assert exposure_class(np.full((144, 256), 250, np.uint8)) == "white"
    assert exposure_class(_line_art(30, size=(144, 256))) is None
    dark_scene = np.full((144, 256), 10, np.uint8)
    dark_scene[40:100, 60:200] = 90  # a dim but real picture
    assert exposure_class(dark_scene) is None


def _scene(shift=(0.0, 0.0), mouth=False, size=(144, 256)) -> np.ndarray:
    """A big line-art 'background' seen through a camera at `shift`, optional mouth line."""
    big = _line_art(120, size=(360, 640), seed=5)
    m = np.float32([[1, 0, 100 + shift[0]], [0, 1, 80 + shift[1]]])
    g = cv2.warpAffine(big, m, (size[1], size[0]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    if mouth:
        cv2.line(g, (120, 70), (126, 71), 30, 1, cv2.LINE_AA)
    return g


def test_tracker_hold_pan_change_and_return():
    tr = DrawingTracker()
    rng = np.random.default_rng(0)

    def noisy(g):
        return np.clip(g + rng.normal(0, 1.0, g.shape), 0, 255).astype(np.uint8)

    d = [tr.push(0, noisy(_scene()))]
    d.append(tr.push(1, noisy(_scene())))  # hold (noise only)
    d.append(tr.push(2, noisy(_scene(mouth=True))))  # tiny new drawing
    d.append(tr.push(3, noisy(_scene(shift=(0.0, 0.0)))))  # back to the first drawing
    d.append(tr.push(4, np.zeros((144, 256), np.uint8)))  # black
    for k, dx in enumerate((1.5, 3.0, 4.5, 6.0)):  # camera pans right
        d.append(tr.push(5 + k, noisy(_scene(shift=(dx, 0.3 * dx)))))
    assert [x.candidate for x in d[:4]] == [True, False, True, False]
    assert d[1].reason == "hold" and d[1].ref == 0
    assert d[3].reason == "repeat" and d[3].ref == 0
    assert d[4].reason == "black" and not d[4].candidate
    for k, x in enumerate(d[5:]):
        dx = 1.5 * (k + 1)
        assert x.reason == "pan" and x.ref == 0, x
        # the picture content moves opposite to the camera: cur(x + shift) == ref(x)
        assert abs(x.shift[0] + dx) < 0.2 and abs(x.shift[1] + 0.3 * dx) < 0.2, x.shift
    assert all(isinstance(x, FrameDecision) for x in d)
    assert tr.n_candidates == 2


def test_same_drawing_and_selection_from_arrays():
    a, b = _scene(), _scene(shift=(2.5, -1.0))
    assert same_drawing(a, b)
    assert not same_drawing(a, _scene(mouth=True))
    # select_shot_frames also takes the decisions as arrays (as stored in a table)
    grays = [a, a, _scene(mouth=True), a, b]
    tr = DrawingTracker()
    dec = [tr.push(i, g) for i, g in enumerate(grays)]
    arrays = dict(candidate=[x.candidate for x in dec], reason=[x.reason for x in dec],
                  ref=[-1 if x.ref is None else x.ref for x in dec])
    idx = np.arange(5)
    sig = {i: grays[i] for i in idx if dec[i].candidate}
    luma = np.array([g.mean() for g in grays])
    sel = select_shot_frames(idx, arrays, sig, {i: 0.8 for i in sig}, luma, params=CleanFrameParams())
    assert sel.kept == [0, 2]
    assert sel.dropped[1] == ("hold", 0) and sel.dropped[3] == ("repeat", 0)
    assert sel.dropped[4][0] == "pan" and sel.dropped[4][1] == 0
    assert sel.keyframes and set(sel.keyframes) <= set(sel.kept)


def test_shot_reverse_shot_return_gets_its_own_candidate():
    """A B A where B is a different shot: the second A starts a shot, so it must be written
    again (the online A-B-A shortcut is only for local changes such as mouth flaps)."""
    a, b = _scene(), _line_art(60, size=(144, 256), seed=11)
    tr = DrawingTracker()
    d = [tr.push(i, g) for i, g in enumerate([a, a, b, b, a, a])]
    assert [x.candidate for x in d] == [True, False, True, False, True, False]


def test_selection_of_a_shot_without_candidates():
    """Frames that all hold a candidate of the previous shot (a cut the tracker could not
    see): nothing can be kept, every frame is still accounted for."""
    dec = [FrameDecision(False, "hold", 7, None, 0.0) for _ in range(5)]
    sel = select_shot_frames(np.arange(10, 15), dec, {}, {}, np.full(5, 100.0))
    assert sel.kept == [] and sel.keyframes == []
    assert sel.dropped == {i: ("hold", 7) for i in range(10, 15)}


def test_translate_matches_warp_affine():
    from anime_assets.vision.frames import _translate

    img = np.random.default_rng(1).random((144, 256)).astype(np.float32) * 255
    for dx, dy in [(0.3, 0.7), (2.5, -1.25), (-3.75, 4.5), (0.0, 0.0), (5.0, 0.0), (300.2, -10.0), (-400.0, 200.5)]:
        ref = cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), (256, 144),
                             flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        out = _translate(img, dx, dy)
        assert out.shape == img.shape
        if abs(dx) < 50:
            assert np.abs(ref - out)[8:-8, 8:-8].max() < 0.01
