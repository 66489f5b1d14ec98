"""Shot layers (vision.layers.decompose_shot) and their stage (stages.layers.layer_shot), end to end.

Input is what the pipeline sees: the H.264 fixture clips at 640x360 (crf 18), decoded with
`decode.read_frames_rgb` over `plate_frame_indices` (flash / transition frames excluded, as
bench/bench_layers.py does); truth is the fixtures' exact re-render (`effects.render_layers`,
`clips.render_frame`). Character prior: `load_segmenter("auto")`, offline = the real MediaPipe
selfie model (the thresholds below were measured with it; anime-seg in the HF cache would
replace it). Measured on this machine (2 cores), asserted below with margin:

==============================================  ===========================================
effects shot 1 (pan 189.3 px + walk + aura)     camera travel 189.4 px, kept frames' offsets
24 kept (every 3rd normal frame, 84 = flash)    within 0.04 px of truth; character IoU min
                                                0.933 / mean 0.942 (target 0.95; 0.78 / 0.82
                                                before the peel_glow retune of 74eb5a4): false
                                                positives only in the screen aura, false
                                                negatives <= 3.8% (peeled); background PSNR
                                                (no char, no fx) min 35.1 dB; background of
                                                frame i vs frame j shifted by the camera
                                                difference >= 45.8 dB
effects shot 0 (still, talk on twos, glow)      consecutive mask IoU min 0.9967; outside the
all 48 frames kept                              glow footprint hold pairs identical (alpha
                                                diff <= 6e-4); INSIDE it ~200 px flip (xfail);
                                                IoU vs truth 0.953-0.955
effects shot 0 without a prior                  IoU 0.04-0.08: a still character is not seen
effects shot 2 (still, rotating magic circle)   consecutive mask IoU 0.89-0.98 (target 0.98,
16 consecutive kept                             xfail); IoU vs truth 0.62-0.67; a spurious 2nd
                                                instance in 3-4 frames (xfail)
recomposition PSNR, shots 0 / 1 / 2             >= 35 dB on every kept frame (the glow peel
                                                never crosses inpainted background)
sample shot 9 (two-shot hold), 15 kept          ids {1, 2} on every frame, instance IoU vs its
                                                character >= 0.936; hold masks identical but
                                                for 2 px at the first frame (xfail); every
                                                character pixel carries an instance id
layer_shot, effects shot 2, 4 kept              ~2 s a run; 3 folders, 4 rows, same ids/URIs
                                                after a re-run; the stored files recompose the
                                                frame at 32.8-33.4 dB (JPEG q95 background)
==============================================  ===========================================
Measured at commit 74eb5a4. Whole file: ~35-40 s on 2 cores (five shot decompositions + two
stage runs, module-scoped).
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from anime_assets.models.segment import load_segmenter
from anime_assets.stages import clean_frames as cf
from anime_assets.stages.layers import ASSETS, BACKGROUND, CHARACTER, EFFECT, LayerModels, layer_shot
from anime_assets.storage import schema as fs
from anime_assets.storage.media import MediaStore
from anime_assets.storage.tables import layers_table
from anime_assets.vision import decode, metrics
from anime_assets.vision.decode import VideoError
from anime_assets.vision.layers import LayerConfig, decompose_shot, plate_frame_indices
from anime_assets_tests.fixtures import clips, effects

SIZE = (640, 360)
W, H = SIZE


# ----------------------------------------------------------------------------- helpers
def _pts(gt) -> np.ndarray:
    return np.arange(gt.n_frames) / gt.fps


def _abnormal(gt, a: int, b: int) -> list[int]:
    """Flash / impact / black / transition frames (clean_frames drops them; no background shows)."""
    return [i for i in range(a, b) if gt.frames[i].get("kind") != "normal"]


def _normal(gt, a: int, b: int) -> list[int]:
    return [i for i in range(a, b) if gt.frames[i].get("kind") == "normal"]


def _decompose(path, gt, a: int, b: int, kept, segment):
    wanted = plate_frame_indices(a, b, kept, LayerConfig().plate_frames, exclude=_abnormal(gt, a, b))
    frames = decode.read_frames_rgb(path, wanted, _pts(gt))
    return frames, decompose_shot(frames, kept, segment=segment)


@functools.lru_cache(maxsize=64)
def _fx_truth(i: int):
    """(character coverage, combined effect alpha, background RGB) of effects-clip frame i."""
    L = effects.render_layers(i, SIZE)
    cov = np.clip(sum(L.masks.values()), 0, 1).astype(np.float32) if L.masks else np.zeros((H, W), np.float32)
    fx = np.zeros((H, W), np.float32)
    for layer in L.effects:
        fx = 1 - (1 - fx) * (1 - layer.rgba[..., 3])
    return cov, fx, L.background


def _shifted(img: np.ndarray, d) -> tuple[np.ndarray, np.ndarray]:
    """out(u) = img(u + d) (bilinear) and where that is inside img with a 1 px margin."""
    M = np.array([[1.0, 0.0, float(d[0])], [0.0, 1.0, float(d[1])]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out = cv2.warpAffine(img, M, (img.shape[1], img.shape[0]), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(np.ones(img.shape[:2], np.uint8), M, (img.shape[1], img.shape[0]), flags=flags,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    valid = cv2.erode(inside, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    return out, valid


def _recomposition_psnr(L, frame) -> float:
    return metrics.psnr(metrics.recompose(L.background, L.character_rgba(), L.effect.rgba, L.effect.blend), frame)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def seg():
    return load_segmenter("auto", allow_download=False)


@pytest.fixture(scope="module")
def fx_gt():
    return effects.effects_clip(size=SIZE)


@pytest.fixture(scope="module")
def walk(fx_gt, seg):
    """Effects shot 1 (frames 48..119): camera pans right while the character walks; 84 is a flash."""
    a, b = fx_gt.shots[1]
    kept = _normal(fx_gt, a, b)[::3]
    frames, res = _decompose(fx_gt.meta["path"], fx_gt, a, b, kept, seg.predict)
    return SimpleNamespace(a=a, b=b, kept=kept, frames=frames, res=res)


@pytest.fixture(scope="module")
def talk(fx_gt, seg):
    """Effects shot 0 (frames 0..47), camera still, talking on twos then a 24-frame hold; EVERY frame kept."""
    a, b = fx_gt.shots[0]
    kept = _normal(fx_gt, a, b)
    frames, res = _decompose(fx_gt.meta["path"], fx_gt, a, b, kept, seg.predict)
    return SimpleNamespace(a=a, b=b, kept=kept, frames=frames, res=res)


@pytest.fixture(scope="module")
def circle(fx_gt, seg):
    """Effects shot 2 (frames 120..167): one held drawing under a rotating magic circle; 16 consecutive kept."""
    a, b = fx_gt.shots[2]
    kept = list(range(a, a + 16))
    frames, res = _decompose(fx_gt.meta["path"], fx_gt, a, b, kept, seg.predict)
    return SimpleNamespace(a=a, b=b, kept=kept, frames=frames, res=res)


@pytest.fixture(scope="module")
def sample():
    path, gt = clips.standard_clips(size=SIZE)["sample"]
    return SimpleNamespace(path=path, gt=gt, spec=clips.sample_spec())


@pytest.fixture(scope="module")
def two_shot(sample, seg):
    """Sample shot 9: two characters holding still (one drawing, 60 normal frames, then a dissolve)."""
    gt = sample.gt
    si = next(k for k, (a, b) in enumerate(gt.shots)
              if len(gt.frames[a]["characters"]) == 2 and len({gt.frames[i]["drawing"] for i in _normal(gt, a, b)}) == 1)
    a, b = gt.shots[si]
    kept = _normal(gt, a, b)[::4]
    frames, res = _decompose(sample.path, gt, a, b, kept, seg.predict)
    return SimpleNamespace(si=si, a=a, b=b, kept=kept, frames=frames, res=res)


# ----------------------------------------------------------------------------- 1. pan + walk
def test_walk_camera_travel(walk, fx_gt):
    cam = {i: fx_gt.frames[i]["camera"] for i in walk.kept}
    true_travel = fx_gt.frames[walk.b - 1]["camera"][0] - fx_gt.frames[walk.a]["camera"][0]
    assert true_travel == pytest.approx(189.33, abs=0.01)  # 71 frames x 4 stage px x 640/960
    tx, ty = walk.res.stats["camera_travel_px"]
    assert tx == pytest.approx(true_travel, abs=3.0)  # measured 189.4
    assert abs(ty) < 1.0
    first = walk.res.frames[0]
    for L in walk.res.frames:  # each kept frame's camera position, relative to the first (measured err <= 0.05 px)
        assert L.offset[0] - first.offset[0] == pytest.approx(cam[L.frame_index][0] - cam[first.frame_index][0], abs=1.0)
        assert L.offset[1] - first.offset[1] == pytest.approx(0.0, abs=1.0)


def test_walk_character_iou(walk):
    # Target 0.95 (bench TARGETS). Short of it because the 'screen' aura hugging her silhouette is
    # partly taken as character: every false positive lies in the aura, there is (almost) no false
    # negative. The glow peel trades some character pixels for the aura (3.8% at most): allowed 6%.
    ious = []
    for L in walk.res.frames:
        cov, fx, _ = _fx_truth(L.frame_index)
        pred, true = L.alpha >= 0.5, cov >= 0.5
        ious.append(metrics.iou(pred, true))
        assert np.count_nonzero(true & ~pred) <= 0.06 * np.count_nonzero(true)  # measured <= 1490 px of ~39000
        assert np.count_nonzero(pred & ~true & (fx == 0)) <= 0.005 * np.count_nonzero(true)  # measured 0
    assert min(ious) >= 0.70, ious  # measured 0.933 (0.765 before glow peeling, 0.782 at 70707be)
    assert np.mean(ious) >= 0.72  # measured 0.942


def test_walk_background_psnr(walk):
    for L in walk.res.frames:
        cov, fx, bg = _fx_truth(L.frame_index)
        clean = (cov == 0) & (fx == 0)
        assert metrics.psnr(L.background, bg, clean) >= 30.0, L.frame_index  # measured min 35.1 dB


def test_walk_background_does_not_flicker(walk):
    """One plate for the shot: frame i's background is frame j's shifted by the camera difference."""
    Ls = walk.res.frames
    n = len(Ls)
    pairs = {(k, k + 1) for k in range(n - 1)} | {(0, k) for k in range(1, n)} | {(k, n - 1) for k in range(n - 1)}
    worst = np.inf
    for p, q in sorted(pairs):
        Li, Lj = Ls[p], Ls[q]
        d = (Li.offset[0] - Lj.offset[0], Li.offset[1] - Lj.offset[1])
        moved, valid = _shifted(Lj.background, d)
        if valid.mean() < 0.2:
            continue
        worst = min(worst, metrics.psnr(Li.background, moved, valid))
    assert worst >= 40.0  # measured 45.8 dB (bilinear resampling of the same plate)


# ----------------------------------------------------------------------------- 2. still shots
def test_still_shot_consecutive_masks(talk):
    assert talk.res.stats["camera_travel_px"] == [0.0, 0.0]
    ious = metrics.flicker_iou([L.alpha for L in talk.res.frames])
    assert len(ious) == 47 and min(ious) >= 0.98  # measured 0.9967 (inside the pulsing glow)
    for L in talk.res.frames:  # all 48 frames, talking and hold
        assert metrics.iou(L.alpha, _fx_truth(L.frame_index)[0]) >= 0.90  # measured 0.953-0.955
        assert [i["id"] for i in L.instances] == [1]


def test_still_shot_holds_identical_outside_the_effect(talk, fx_gt):
    """Pairs of consecutive frames showing the same drawing: the mask does not change where the
    picture does not (outside the animated glow's footprint)."""
    draw = [fx_gt.frames[i]["drawing"] for i in talk.kept]
    pairs = [k for k in range(len(talk.kept) - 1) if draw[k] == draw[k + 1]]
    assert len(pairs) == 36
    for k in pairs:
        A, B = talk.res.frames[k].alpha, talk.res.frames[k + 1].alpha
        outside = (_fx_truth(talk.kept[k])[1] == 0) & (_fx_truth(talk.kept[k + 1])[1] == 0)
        assert np.array_equal((A >= 0.5)[outside], (B >= 0.5)[outside])
        assert float(np.abs(A - B)[outside].max()) <= 2e-3  # measured 5e-4


@pytest.mark.xfail(strict=True, reason=(
    "vision/layers.py stabilise + per-frame still_pixels: in effects shot 0's 24-frame hold (frames 24..47, "
    "truth mask identical) the additive glow pulses over the character, the aligned colour changes there, "
    "so alpha is recomputed and up to 200-300 px flip (IoU >= 0.995); 17 of 36 hold pairs differ"))
def test_still_shot_holds_identical_under_animated_glow(talk, fx_gt):
    draw = [fx_gt.frames[i]["drawing"] for i in talk.kept]
    for k in range(len(talk.kept) - 1):
        if draw[k] == draw[k + 1]:
            assert np.array_equal(talk.res.frames[k].alpha >= 0.5, talk.res.frames[k + 1].alpha >= 0.5), talk.kept[k]


def _hold_pairs(two_shot, gt):
    draw = [gt.frames[i]["drawing"] for i in two_shot.kept]
    return [k for k in range(len(two_shot.kept) - 1) if draw[k] == draw[k + 1]]


def test_two_shot_hold_masks(two_shot, sample):
    """A hold without effects: binary masks and instance labels repeat; at most the first pair
    (the cut's first frame is an I-frame with other codec noise) differs, by a few pixels."""
    pairs = _hold_pairs(two_shot, sample.gt)
    assert len(pairs) == len(two_shot.kept) - 1 == 14
    changed = []
    for k in pairs:
        A, B = two_shot.res.frames[k].alpha, two_shot.res.frames[k + 1].alpha
        n = int(np.count_nonzero((A >= 0.5) != (B >= 0.5)))
        changed.append(n)
        if n == 0:
            assert np.array_equal(two_shot.res.frames[k].labels, two_shot.res.frames[k + 1].labels)
    assert max(changed) <= 10  # measured 2 (first pair only)
    assert sum(n > 0 for n in changed) <= 1
    ious = metrics.flicker_iou([L.alpha for L in two_shot.res.frames])
    assert min(ious) >= 0.98  # measured 0.99999


@pytest.mark.xfail(strict=True, reason=(
    "vision/layers.py: sample shot 9 (frames 638..697, one drawing, no effect, still camera): the mask of "
    "frame 638 (first after the cut) and of 639/642 differ in 2 px (alpha 0.51 vs < 0.5) - the I-frame's "
    "codec noise at the edge exceeds still_threshold=6, so alpha is recomputed there"))
def test_two_shot_hold_masks_all_identical(two_shot, sample):
    for k in _hold_pairs(two_shot, sample.gt):
        assert np.array_equal(two_shot.res.frames[k].alpha >= 0.5, two_shot.res.frames[k + 1].alpha >= 0.5)


def test_magic_circle_hold(circle):
    """One drawing held under a rotating magic circle: what the mask does now."""
    ious = metrics.flicker_iou([L.alpha for L in circle.res.frames])
    assert min(ious) >= 0.85  # measured 0.893-0.984: circle strokes over / beside her enter the mask
    for L in circle.res.frames:
        assert metrics.iou(L.alpha, _fx_truth(L.frame_index)[0]) >= 0.55  # measured 0.616-0.670


@pytest.mark.xfail(strict=True, reason=(
    "effects shot 2 (frames 120..135 kept, one held drawing, still camera): consecutive character mask "
    "IoU 0.89-0.98 (mostly < 0.97), below the 0.98 still-shot target (bench TARGETS['static_iou']): the rotating magic "
    "circle's strokes are taken as moving character and change every frame; character IoU 0.62-0.70 "
    "(MediaPipe misses her left arm / skirt, which the plate then keeps as background)"))
def test_magic_circle_hold_meets_static_target(circle):
    assert min(metrics.flicker_iou([L.alpha for L in circle.res.frames])) >= 0.98


# ----------------------------------------------------------------------------- 3. no prior
def test_still_character_not_found_without_prior(fx_gt):
    """Motion against the plate alone cannot see a character that never moves: the plate is her."""
    a, b = fx_gt.shots[0]
    kept = [0, 2, 4]
    _, res = _decompose(fx_gt.meta["path"], fx_gt, a, b, kept, None)
    assert res.stats["prior"] is False
    for L in res.frames:
        assert metrics.iou(L.alpha, _fx_truth(L.frame_index)[0]) < 0.5  # measured 0.04-0.08


# ----------------------------------------------------------------------------- 4. recomposition

@pytest.mark.parametrize("shot", ["talk", "walk", "circle"])
def test_recomposition(shot, request):
    r = request.getfixturevalue(shot)
    assert [L.frame_index for L in r.res.frames] == r.kept
    for L in r.res.frames:
        assert L.background.shape == (H, W, 3) and L.character_rgba().shape == (H, W, 4)
        assert L.effect.blend in metrics.BLEND_MODES
        assert _recomposition_psnr(L, r.frames[L.frame_index]) >= 35.0, L.frame_index  # measured 39.1 / 39.7 / 33.4 (37.6 at 70707be)


# ----------------------------------------------------------------------------- 5. instances
def test_two_shot_instances_stable(two_shot, sample):
    gt = sample.gt
    ids_seen = set()
    mapping: dict[str, int] = {}
    for L in two_shot.res.frames:
        chars = gt.frames[L.frame_index]["characters"]
        assert len(chars) == 2
        assert len(L.instances) == 2
        ids_seen |= {i["id"] for i in L.instances}
        _, masks = clips.render_frame(sample.spec, L.frame_index, SIZE)
        for cid, m in masks.items():
            scores = {i["id"]: metrics.iou(L.labels == i["id"], m >= 0.5) for i in L.instances}
            best = max(scores, key=scores.get)
            assert scores[best] >= 0.85, (L.frame_index, cid, scores)  # measured >= 0.937
            assert mapping.setdefault(cid, best) == best, (L.frame_index, cid)
    assert len(set(mapping.values())) == 2
    assert ids_seen == set(mapping.values())


def test_single_character_one_instance(walk, talk):
    for L in walk.res.frames + talk.res.frames:
        assert [i["id"] for i in L.instances] == [1], L.frame_index


@pytest.mark.xfail(strict=True, reason=(
    "effects shot 2 (one character, s2c0, truth bbox x 260-412): magic-circle stroke fragments left in "
    "the character mask become a second instance (id 2, ~0.1% of the frame, x ~380-524) in 3-4 of "
    "frames 120..135 (131, 132, 133[, 135]), and widen instance 1's bbox up to x1 = 540"))
def test_magic_circle_one_instance(circle):
    for L in circle.res.frames:
        assert [i["id"] for i in L.instances] == [1], L.frame_index


@pytest.mark.parametrize("shot", ["two_shot", "circle"])
def test_every_character_pixel_has_an_instance(shot, request):
    for L in request.getfixturevalue(shot).res.frames:
        assert not np.any((L.alpha >= 0.5) & (L.labels == 0)), L.frame_index


# ----------------------------------------------------------------------------- 6. / 7. the stage
EP, SHOT = "ep01", "s0002"


def _frames_doc(store, pts, shot: str, start: int, end: int, kept) -> None:
    rows = []
    for f in range(start, end):
        if f in kept:
            rows.append({"frame": f, "pts": float(pts[f]), "kept": True, "image": f"f{f:06d}.jpg"})
        else:
            rows.append({"frame": f, "pts": float(pts[f]), "kept": False, "reason": "hold", "ref": kept[0] if kept else None})
    doc = {"episode": EP, "shot": shot, "start": start, "end": end, "kept": len(kept), "frames": rows}
    store.write_bytes(cf.ASSET, EP, shot, cf.FRAMES_NAME, json.dumps(doc).encode())


def _rows(table, shot=SHOT) -> list[dict]:
    return table.read_partition(EP, shot).to_pylist()


def _snapshot(store, table, shot=SHOT):
    files = {}
    for a in ASSETS:
        d = store.partition_dir(a, EP, shot)
        for p in sorted(d.parent.iterdir()):  # staging / retired leftovers would show here too
            if p.name.startswith(f".{shot}"):
                files[f"{a}/{p.name}"] = "leftover"
        for p in sorted(d.iterdir()):
            files[f"{a}/{shot}/{p.name}"] = hashlib.sha1(p.read_bytes()).hexdigest()
    rows = [{k: v for k, v in r.items()} for r in _rows(table, shot)]
    return files, rows, table.version


@pytest.fixture(scope="module")
def stage(tmp_path_factory, fx_gt, seg):
    root = tmp_path_factory.mktemp("layers_stage")
    store = MediaStore(root / "media")
    table = layers_table(root / "lancedb")
    pts = _pts(fx_gt)
    a, b = fx_gt.shots[2]
    kept = [a, a + 12, a + 24, a + 36]
    _frames_doc(store, pts, SHOT, a, b, kept)
    index = SimpleNamespace(pts=pts)
    models = LayerModels(segment=seg, inpaint=None)
    video = Path(fx_gt.meta["path"])
    first = layer_shot(store, table, video, index, EP, SHOT, models)
    rows1 = _rows(table)
    second = layer_shot(store, table, video, index, EP, SHOT, models)
    return SimpleNamespace(root=root, store=store, table=table, pts=pts, kept=kept, index=index, models=models,
                           video=video, first=first, second=second, rows1=rows1, rows2=_rows(table), a=a, b=b)


def _copy(stage, tmp_path):
    """The stage's data root copied (media + LanceDB) so a test can change it alone."""
    shutil.copytree(stage.root, tmp_path / "root")
    return MediaStore(tmp_path / "root" / "media"), layers_table(tmp_path / "root" / "lancedb")


def test_stage_writes_three_folders(stage):
    s = stage.second
    assert s["kept"] == s["rows"] == len(stage.kept) == 4
    assert set(s["folders"]) == set(ASSETS)
    names = {a: stage.store.list_names(a, EP, SHOT) for a in ASSETS}
    png = {f"f{f:06d}.png" for f in stage.kept}
    assert png | {f"f{f:06d}.ids.png" for f in stage.kept} | {"layers.json"} <= set(names[CHARACTER])
    assert {n for n in names[CHARACTER] if n.endswith(".png") and not n.endswith(".ids.png")} == png
    assert {n for n in names[EFFECT] if n.endswith(".png")} == png
    assert "effects.json" in names[EFFECT]
    assert {f"f{f:06d}.jpg" for f in stage.kept} | {"plate.png", "plate_seen.png", "background.json"} <= set(names[BACKGROUND])
    for f in stage.kept:
        for asset in (CHARACTER, EFFECT):
            img = cv2.imread(str(stage.store.path(asset, EP, SHOT, f"f{f:06d}.png")), cv2.IMREAD_UNCHANGED)
            assert img is not None and img.shape == (H, W, 4) and img.dtype == np.uint8, (asset, f)
        ids = cv2.imread(str(stage.store.path(CHARACTER, EP, SHOT, f"f{f:06d}.ids.png")), cv2.IMREAD_UNCHANGED)
        assert ids.shape == (H, W) and ids.dtype == np.uint8
        bg = cv2.imread(str(stage.store.path(BACKGROUND, EP, SHOT, f"f{f:06d}.jpg")), cv2.IMREAD_UNCHANGED)
        assert bg.shape == (H, W, 3)
    plate = cv2.imread(str(stage.store.path(BACKGROUND, EP, SHOT, "plate.png")), cv2.IMREAD_UNCHANGED)
    assert plate.ndim == 3 and plate.shape[0] >= H and plate.shape[1] >= W
    doc = json.loads(stage.store.read_bytes(CHARACTER, EP, SHOT, "layers.json"))
    assert [fr["frame"] for fr in doc["frames"]] == stage.kept
    assert doc["segmentation_model"] == stage.models.segmentation_id
    fx_doc = json.loads(stage.store.read_bytes(EFFECT, EP, SHOT, "effects.json"))
    assert [fr["frame"] for fr in fx_doc["frames"]] == stage.kept
    assert s["recomposition_psnr_min"] >= 30.0 and s["recomposition_psnr_mean"] >= s["recomposition_psnr_min"]


def test_stage_recomposition_target(stage):
    assert stage.second["recomposition_psnr_min"] >= 35.0


def test_stage_files_recompose_the_frame(stage):
    """The written files alone (jpg background, RGBA character, RGBA effect + blend from the row)
    give the decoded frame back."""
    frames = decode.read_frames_rgb(stage.video, stage.kept, stage.pts)
    for r in stage.rows2:
        img = {k: cv2.imread(str(MediaStore.path_from_uri(r[k])), cv2.IMREAD_UNCHANGED)
               for k in (fs.CHARACTER_URI, fs.EFFECT_URI, fs.BACKGROUND_URI, fs.INSTANCE_MASK_URI)}
        char = cv2.cvtColor(img[fs.CHARACTER_URI], cv2.COLOR_BGRA2RGBA)
        fx = cv2.cvtColor(img[fs.EFFECT_URI], cv2.COLOR_BGRA2RGBA)
        bg = cv2.cvtColor(img[fs.BACKGROUND_URI], cv2.COLOR_BGR2RGB)
        out = metrics.recompose(bg, char, fx, r[fs.EFFECT_BLEND])
        # consistency, not quality: the background went through JPEG q95 (36.1 dB vs the in-memory
        # one on this textured lecture hall); measured 32.8-33.4 dB from the files (34.2-35.1 at 70707be)
        assert metrics.psnr(out, frames[r[fs.FRAME_INDEX]]) >= 30.0
        # ids: only the row's ids, and only where the character is (not everywhere it is: see
        # test_every_character_pixel_has_an_instance)
        ids = img[fs.INSTANCE_MASK_URI]
        assert set(np.unique(ids).tolist()) - {0} == {i["id"] for i in r[fs.INSTANCES]}
        assert not np.any((ids > 0) & (char[..., 3] < 127))
        assert r[fs.CHARACTER_COVERAGE] == pytest.approx(float((char[..., 3] >= 128).mean()), abs=1e-3)


def test_stage_rows_idempotent(stage):
    ids = [fs.frame_id(EP, SHOT, f) for f in stage.kept]
    uri_cols = (fs.CHARACTER_URI, fs.INSTANCE_MASK_URI, fs.EFFECT_URI, fs.BACKGROUND_URI)
    for rows in (stage.rows1, stage.rows2):
        assert [r[fs.ID] for r in rows] == ids
        assert [r[fs.FRAME_INDEX] for r in rows] == stage.kept
    assert stage.table.count() == stage.table.count(EP, SHOT) == len(stage.kept)  # no duplicates
    for r1, r2 in zip(stage.rows1, stage.rows2):
        assert [r1[c] for c in uri_cols] == [r2[c] for c in uri_cols]
        assert r2[fs.SEGMENTATION_MODEL] == stage.models.segmentation_id
        assert r2[fs.INPAINT_MODEL] == "opencv-telea"
        assert r2[fs.EFFECT_BLEND] in fs.BLEND_MODES
        for c in uri_cols:
            assert MediaStore.path_from_uri(r2[c]).is_file(), r2[c]
            assert MediaStore.path_from_uri(r2[c]).parent == stage.store.partition_dir(
                {fs.CHARACTER_URI: CHARACTER, fs.INSTANCE_MASK_URI: CHARACTER, fs.EFFECT_URI: EFFECT,
                 fs.BACKGROUND_URI: BACKGROUND}[c], EP, SHOT)
    assert stage.second["table_version"] > stage.first["table_version"]


def test_stage_empty_shot(stage, tmp_path):
    store, table = _copy(stage, tmp_path)
    assert table.count(EP, SHOT) == 4
    _frames_doc(store, stage.pts, SHOT, stage.a, stage.b, [])
    # also a shot that was never written
    _frames_doc(store, stage.pts, "s0005", stage.a, stage.b, [])
    for shot in (SHOT, "s0005"):
        s = layer_shot(store, table, stage.video, stage.index, EP, shot, stage.models)
        assert s["kept"] == s["rows"] == 0 and s["instances"] == []
        assert table.count(EP, shot) == 0
        for a in ASSETS:
            assert store.partition_dir(a, EP, shot).is_dir()
            names = store.list_names(a, EP, shot)
            assert not [n for n in names if n.endswith((".png", ".jpg"))], (a, names)
    assert table.count() == 0


@pytest.mark.parametrize("kind", ["missing", "empty", "junk", "corrupt"])
def test_stage_bad_video_leaves_previous_output(stage, tmp_path, kind):
    store, table = _copy(stage, tmp_path)
    before = _snapshot(store, table)
    video = tmp_path / f"{kind}_episode.mp4"
    if kind == "empty":
        video.write_bytes(b"")
    elif kind == "junk":
        video.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, np.uint8).tobytes())
    elif kind == "corrupt":  # valid container, damaged stream: every 997th byte of the last 3/4 flipped
        data = bytearray(stage.video.read_bytes())
        for k in range(len(data) // 4, len(data), 997):
            data[k] ^= 0xFF
        video.write_bytes(bytes(data))
    with pytest.raises(VideoError) as info:
        layer_shot(store, table, video, stage.index, EP, SHOT, stage.models)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(video.name + ": ")
    assert _snapshot(store, table) == before
