"""Segmentation and inpainting loaders, offline.

* anime-seg and LaMa: tiny stand-in ONNX graphs with the real models' signatures (input/output
  names, ranks, 1024 / 512 sizes), saved into a Hugging Face cache layout and loaded with
  HF_HUB_OFFLINE=1 through `load_segmenter("auto")` / `load_inpainter("auto")`, the production path.
* MediaPipe selfie segmentation: the real tflite models (extracted by scripts/setup.sh) on fixture
  frames with exact character masks.
* the fallbacks and their reasons, and the registry's view of what is installed.
"""

from __future__ import annotations

import importlib.util
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from anime_assets.models import integrity, registry
from anime_assets.models.clip import ModelUnavailable
from anime_assets.models.inpaint import LamaInpainter, TeleaInpainter, context_box, load_inpainter
from anime_assets.models.segment import (
    IsnetSegmenter,
    MediapipeSegmenter,
    Segmenter,
    load_segmenter,
)
from anime_assets_tests.fixtures import clips
from anime_assets_tests.standins import offline_hf_cache, put_in_hf_cache, save_onnx

REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- stand-in models
def isnet_standin(path: Path, logits: bool = False) -> Path:
    """skytnt/anime-seg isnetis.onnx signature: img 1x3x1024x1024 -> mask 1x1x1024x1024 in [0, 1].
    Stand-in: P(character) = sigmoid(20 * (mean over RGB - 0.5)), i.e. bright pixels (`logits`:
    without the final sigmoid)."""
    nodes = [
        helper.make_node("ReduceMean", ["img", "axes"], ["grey"], keepdims=1),
        helper.make_node("Sub", ["grey", "half"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["mask" if logits else "logits"]),
    ]
    if not logits:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["mask"]))
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [20.0]),
    ]
    graph = helper.make_graph(
        nodes, "isnetis-standin",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 1024, 1024])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 1024, 1024])],
        initializer=inits,
    )
    return save_onnx(graph, path)


def lama_standin(path: Path, out_scale: float = 255.0) -> Path:
    """Carve/LaMa-ONNX lama_fp32.onnx signature: image 1x3x512x512 + mask 1x1x512x512 -> output
    1x3x512x512 in 0..255. Stand-in: known pixels kept, hole pixels = mean colour of the input
    (the hole is zeroed by the caller), times `out_scale`."""
    nodes = [
        helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=1),  # 1x3x1x1
        helper.make_node("Mul", ["mask", "mean"], ["fill"]),  # 1x3x512x512
        helper.make_node("Add", ["image", "fill"], ["blend"]),
        helper.make_node("Mul", ["blend", "scale"], ["output"]),
    ]
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [out_scale]),
    ]
    graph = helper.make_graph(
        nodes, "lama-standin",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 512, 512]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 512, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 512, 512])],
        initializer=inits,
    )
    return save_onnx(graph, path)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline mode on."""
    return offline_hf_cache(tmp_path, monkeypatch)


def bright_box_frame(h, w, box):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    y0, y1, x0, x1 = box
    rgb[y0:y1, x0:x1] = 230
    return rgb


# ---------------------------------------------------------------- anime-seg (ISNet) through "auto"
def test_anime_seg_loads_from_hf_cache_offline(hf_cache):
    cached = put_in_hf_cache(hf_cache, "skytnt/anime-seg", "isnetis.onnx", isnet_standin)
    assert registry.is_available("anime-seg-isnetis")[0]
    seg = load_segmenter("auto")
    assert isinstance(seg, IsnetSegmenter) and isinstance(seg, Segmenter)
    assert seg.model_id == f"anime-seg-isnetis@{integrity.sha256_file(cached)[:12]}"
    assert seg.fallback_reason is None and seg.size == 1024 and seg.input_name == "img"
    # Landscape and portrait frames: the letterbox must map the mask back onto the same pixels.
    for (h, w), box in (((360, 640), (100, 260, 300, 420)), ((1080, 1920), (200, 900, 1000, 1400)), ((300, 120), (50, 150, 30, 90))):
        rgb = bright_box_frame(h, w, box)
        prob = seg.predict(rgb)
        assert prob.shape == (h, w) and prob.dtype == np.float32
        assert 0.0 <= prob.min() and prob.max() <= 1.0
        y0, y1, x0, x1 = box
        inside = np.zeros((h, w), bool)
        inside[y0:y1, x0:x1] = True
        core = np.zeros((h, w), bool)
        core[y0 + 3 : y1 - 3, x0 + 3 : x1 - 3] = True
        far = ~np.pad(inside[3:-3, 3:-3], 3, constant_values=False)
        far[y0 - 3 : y1 + 3, x0 - 3 : x1 + 3] = False
        assert prob[core].min() > 0.95, (h, w)
        assert prob[far].max() < 0.05, (h, w)
    # Cached per process: the same session object for the same file.
    assert load_segmenter("anime-seg").session is seg.session


def test_anime_seg_explicit_path_and_logit_output(tmp_path, hf_cache):
    path = isnet_standin(tmp_path / "isnet-logits.onnx", logits=True)
    seg = load_segmenter("auto", path=str(path))
    assert isinstance(seg, IsnetSegmenter) and seg.model_id == f"anime-seg-isnetis@{integrity.sha256_file(path)[:12]}"
    rgb = bright_box_frame(200, 300, (50, 150, 100, 200))
    prob = seg.predict(rgb)
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert prob[60:140, 110:190].min() > 0.95 and prob[:40].max() < 0.05


# ---------------------------------------------------------------- LaMa through "auto"
def test_lama_loads_from_hf_cache_offline(hf_cache):
    cached = put_in_hf_cache(hf_cache, "Carve/LaMa-ONNX", "lama_fp32.onnx", lama_standin)
    assert registry.is_available("lama-onnx")[0]
    inp = load_inpainter("auto")
    assert isinstance(inp, LamaInpainter)
    assert inp.model_id == f"lama-onnx@{integrity.sha256_file(cached)[:12]}"
    assert inp.fallback_reason is None and (inp.image_name, inp.mask_name, inp.size) == ("image", "mask", 512)
    rng = np.random.default_rng(1)
    for (h, w), (y0, y1, x0, x1) in (((1080, 1920), (400, 700, 800, 1300)), ((200, 300), (50, 90, 100, 180)), ((1080, 1920), (10, 30, 5, 25))):
        rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        hole = np.zeros((h, w), bool)
        hole[y0:y1, x0:x1] = True
        hole[y0 + 5, x1 + 3 : x1 + 40] = True  # a thin 1-px arm: must be filled too
        out = inp.inpaint(rgb, hole)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out[~hole], rgb[~hole])  # outside the hole: untouched
        # The stand-in fills with the crop's mean colour: flat, mid-grey for uniform noise.
        filled = out[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].reshape(-1, 3).astype(float)
        assert filled.std(axis=0).max() < 12 and np.all(np.abs(filled.mean(axis=0) - 127.5) < 20)
        assert inp.last_output_scale == 255.0
    empty = np.zeros((64, 64), bool)
    frame = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(inp.inpaint(frame, empty), frame)


def test_lama_output_scale_detected(tmp_path, hf_cache):
    """An export that returns [0, 1] instead of 0..255 is recognised from the known pixels."""
    path = lama_standin(tmp_path / "lama01.onnx", out_scale=1.0)
    inp = load_inpainter("lama", path=path)
    rgb = np.full((600, 800, 3), 200, np.uint8)
    hole = np.zeros((600, 800), bool)
    hole[200:300, 300:400] = True
    out = inp.inpaint(rgb, hole)
    assert inp.last_output_scale == 1.0  # read as 0..255 it would come out near-black
    # mean of the 512 px crop with the hole zeroed: 200 * (1 - 100*100 / 512**2) = 192
    assert np.abs(out[hole].astype(int) - 192).max() <= 2
    np.testing.assert_array_equal(out[~hole], rgb[~hole])


def test_context_box():
    hole = np.zeros((1080, 1920), bool)
    hole[1000:1070, 1850:1900] = True  # near a corner
    y0, y1, x0, x1 = context_box(hole, 512)
    assert (y1 - y0, x1 - x0) == (512, 512) and 0 <= y0 and y1 <= 1080 and 0 <= x0 and x1 <= 1920
    assert hole[y0:y1, x0:x1].sum() == hole.sum()
    hole[:] = False
    hole[100:1000, 200:1700] = True  # bigger than the frame height allows: whole height, square-ish width
    y0, y1, x0, x1 = context_box(hole, 512)
    assert (y0, y1) == (0, 1080) and hole[y0:y1, x0:x1].sum() == hole.sum()


# ---------------------------------------------------------------- Telea
def test_telea_fills_only_the_hole():
    rgb = np.zeros((120, 200, 3), np.uint8)
    rgb[:, :] = (40, 120, 200)
    rgb[:, 100:] = (200, 60, 20)
    hole = np.zeros((120, 200), bool)
    hole[40:60, 20:50] = True
    dirty = rgb.copy()
    dirty[hole] = 255
    out = TeleaInpainter().inpaint(dirty, hole)
    np.testing.assert_array_equal(out[~hole], dirty[~hole])
    assert np.abs(out[hole].astype(int) - (40, 120, 200)).max() <= 6
    np.testing.assert_array_equal(TeleaInpainter().inpaint(dirty, np.zeros_like(hole)), dirty)
    with pytest.raises(ValueError):
        TeleaInpainter().inpaint(dirty, hole[:10])


# ---------------------------------------------------------------- fallbacks
def test_fallbacks_offline_with_empty_cache(hf_cache, monkeypatch):
    seg = load_segmenter("auto")
    assert isinstance(seg, MediapipeSegmenter)
    assert seg.model_id == "mediapipe-selfie-0.10.21"
    assert seg.fallback_reason.startswith("anime-seg-isnetis unavailable (")
    assert "HF_HUB_OFFLINE" in seg.fallback_reason and "\n" not in seg.fallback_reason

    with pytest.raises(ModelUnavailable) as err:
        load_segmenter("anime-seg", allow_download=False)
    assert "skytnt/anime-seg" in err.value.reason and "\n" not in err.value.reason
    monkeypatch.delenv("HF_HUB_OFFLINE")  # online but downloads off: still no network touched
    with pytest.raises(ModelUnavailable, match=r"allow_download=False"):
        load_segmenter("anime-seg", allow_download=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    inp = load_inpainter("auto")
    assert isinstance(inp, TeleaInpainter) and inp.model_id == "opencv-telea"
    assert inp.fallback_reason.startswith("lama-onnx unavailable (") and "Carve/LaMa-ONNX" in inp.fallback_reason
    assert load_inpainter("telea").fallback_reason is None

    for loader in (load_segmenter, load_inpainter):
        with pytest.raises(ModelUnavailable):
            loader("none")
        with pytest.raises(ValueError):
            loader("no-such-model")
    with pytest.raises(ModelUnavailable, match="does not exist"):  # an explicit path is never silently skipped
        load_segmenter("auto", path=hf_cache / "missing.onnx")


def test_no_segmenter_at_all(hf_cache, tmp_path, monkeypatch):
    monkeypatch.setenv(registry.MODELS_DIR_ENV, str(tmp_path / "no-models"))
    with pytest.raises(ModelUnavailable) as err:
        load_segmenter("auto")
    assert "anime-seg-isnetis" in err.value.reason and "mediapipe-selfie" in err.value.reason
    assert "setup.sh" in err.value.reason


# ---------------------------------------------------------------- MediaPipe selfie: real model, real frames
def iou(prob, masks):
    truth = np.zeros(prob.shape, bool)
    for m in masks.values():
        truth |= m > 0.5
    pred = prob > 0.5
    return (pred & truth).sum() / max(1, (pred | truth).sum())


# sample_spec frames (640x360), IoU measured with the landscape+general mean: 120 medium shot 0.95,
# 384 close-up 0.95, 300 two-shot full bodies 0.90. Full bodies in fast pans drop to ~0.65.
@pytest.mark.parametrize("frame,min_iou", [(120, 0.85), (384, 0.85), (300, 0.8)])
def test_mediapipe_selfie_on_fixture_frames(frame, min_iou):
    ok, why = registry.is_available("mediapipe-selfie")
    assert ok, f"{why} - run scripts/setup.sh"
    seg = load_segmenter("mediapipe-selfie")
    assert seg.model_id == "mediapipe-selfie-0.10.21" and len(seg.models) == 2
    rgb, masks = clips.render_frame(clips.sample_spec(), frame, (640, 360))
    prob = seg.predict(rgb)
    assert prob.shape == (360, 640) and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert iou(prob, masks) >= min_iou


def test_mediapipe_explicit_file_and_sizes():
    folder = registry.bundled_dir(registry.MEDIAPIPE_PIN)
    seg = load_segmenter("mediapipe-selfie", path=folder / "selfie_segmentation_landscape.tflite")
    assert seg.model_id == f"mediapipe-selfie@{integrity.sha256_file(folder / 'selfie_segmentation_landscape.tflite')[:12]}"
    for shape in ((1080, 1920, 3), (37, 91, 3), (64, 48)):
        prob = seg.predict(np.zeros(shape, np.uint8))
        assert prob.shape == shape[:2] and prob.dtype == np.float32


# ---------------------------------------------------------------- registry and the setup step
def test_registry_tells_the_truth(hf_cache, tmp_path, monkeypatch):
    assert registry.is_available("opencv-telea")[0]
    assert not registry.is_available("anime-seg-isnetis")[0] and not registry.is_available("lama-onnx")[0]
    for name in ("mediapipe-selfie", "mediapipe-pose-detection", "mediapipe-pose-landmark-full", "mediapipe-face-detection-short"):
        ok, why = registry.is_available(name)
        assert ok, why
        assert registry.REGISTRY[name].sha256  # every extracted file has a recorded digest
    # A tampered copy is refused.
    copy = tmp_path / "models"
    shutil.copytree(registry.bundled_dir(registry.MEDIAPIPE_PIN), copy / "mediapipe-0.10.21")
    monkeypatch.setenv(registry.MODELS_DIR_ENV, str(copy))
    assert registry.is_available("mediapipe-selfie")[0]
    with open(copy / "mediapipe-0.10.21" / "selfie_segmentation_landscape.tflite", "r+b") as f:
        f.write(b"XXXX")
    ok, why = registry.is_available("mediapipe-selfie")
    assert not ok and "sha256" in why
    with pytest.raises(ModelUnavailable, match="sha256"):
        load_segmenter("mediapipe-selfie")


def _bundled_models_script():
    spec = importlib.util.spec_from_file_location("bundled_models", REPO_ROOT / "scripts" / "bundled_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundled_models_extraction_checks_digests(tmp_path):
    """The setup step's extraction, on a wheel-shaped zip built from the extracted files."""
    script = _bundled_models_script()
    wanted = script.wanted_files(registry.MEDIAPIPE_PIN)
    assert set(wanted) >= {"selfie_segmentation_landscape.tflite", "selfie_segmentation.tflite", "pose_detection.tflite",
                           "pose_landmark_full.tflite", "face_detection_short_range.tflite", "LICENSE"}
    source = registry.bundled_dir(registry.MEDIAPIPE_PIN)
    wheel = tmp_path / "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in wanted:
            member = "mediapipe-0.10.21.dist-info/LICENSE" if name == "LICENSE" else f"mediapipe/modules/x/{name}"
            zf.write(source / name, member)
        zf.writestr("mediapipe/other/LICENSE", "not this one")
    out = tmp_path / "out"
    script.extract(wheel, wanted, out)
    assert script.missing_or_bad(out, wanted) == []
    bad = dict(wanted, **{"pose_detection.tflite": "0" * 64})
    with pytest.raises(SystemExit, match="sha256"):
        script.extract(wheel, bad, tmp_path / "out2")


def test_download_path_when_online(hf_cache, monkeypatch):
    """Online with downloads allowed, a missing file is fetched into the cache via huggingface_hub
    (stubbed here: no network in tests); a failed download is a one-line ModelUnavailable."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(registry, "hub_unreachable_reason", lambda timeout=3.0: None)  # "online"
    calls = []

    def fake_download(repo_id, filename, *, cache_dir, etag_timeout, **kwargs):
        calls.append((repo_id, filename, Path(cache_dir)))
        return str(put_in_hf_cache(Path(cache_dir), repo_id, filename, isnet_standin))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    seg = load_segmenter("auto")
    assert isinstance(seg, IsnetSegmenter) and calls == [("skytnt/anime-seg", "isnetis.onnx", hf_cache)]

    def failing_download(*args, **kwargs):
        raise OSError("Network is unreachable\nmore detail on a second line")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing_download)
    inp = load_inpainter("auto")
    assert isinstance(inp, TeleaInpainter)
    assert "could not download hf-hub:Carve/LaMa-ONNX/lama_fp32.onnx: OSError: Network is unreachable" in inp.fallback_reason
    assert "\n" not in inp.fallback_reason


def test_unreachable_hub_fails_fast(hf_cache, monkeypatch):
    """Without network (and without HF_HUB_OFFLINE), the loader falls back after one short
    connection attempt instead of huggingface_hub's ~25 s of retries."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # nothing listens on the discard port
    t0 = time.perf_counter()
    seg = load_segmenter("auto")
    assert time.perf_counter() - t0 < 5
    assert "unreachable" in seg.fallback_reason
