"""CLIP loading through the production path with a tiny offline model, and the colour-layout
fallback descriptor on synthetic anime-like frames."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
import torch

from anime_assets.models import registry
from anime_assets.models.clip import ClipEmbedder, ModelUnavailable, Preprocess, load_clip, prefetch, read_rgb
from anime_assets.vision.embed import COLOUR_LAYOUT_ID, DIM, ColourLayoutEmbedder, load_embedder

open_clip = pytest.importorskip("open_clip")

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    # vocab_size must match open_clip's bundled BPE tokenizer.
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_state_dict():
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CFG)
    return {k: v.clone().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture
def hf_cache(tmp_path, monkeypatch, tiny_state_dict):
    """A Hugging Face hub cache with `testorg/tiny-clip` in it; offline mode on."""
    from safetensors.torch import save_file

    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--testorg--tiny-clip"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    config = {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    save_file(tiny_state_dict, str(snapshot / "open_clip_model.safetensors"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def random_frames(n, seed=0, shape=(90, 160, 3)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(n)]


# ---------------------------------------------------------------- CLIP (tiny, offline)
def test_load_clip_from_hf_cache(hf_cache):
    embedder = load_clip("hf-hub:testorg/tiny-clip", num_threads=2, batch_size=4)
    assert isinstance(embedder, ClipEmbedder)
    assert embedder.model_id == "open_clip:hf-hub:testorg/tiny-clip"
    assert embedder.dim == 32 and embedder.preprocess.image_size == 64
    assert embedder.preprocess.mean == (0.5, 0.5, 0.5)  # preprocess_cfg from the hub config
    frames = random_frames(10) + [np.zeros((300, 200, 3), np.uint8), np.zeros((50, 50), np.uint8)]
    vectors = embedder.embed_images(frames)
    assert vectors.shape == (12, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Deterministic, and independent of batching.
    again = load_clip("hf-hub:testorg/tiny-clip", batch_size=5).embed_images(frames)
    np.testing.assert_allclose(vectors, again, atol=1e-5)
    texts = embedder.embed_texts(["a girl with red hair", "a night sky", "a classroom"])
    assert texts.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_images([]).shape == (0, 32)


def test_loaded_weights_are_the_saved_ones(hf_cache, tiny_state_dict):
    """Not a silently random-initialised model: the parameters equal what we saved."""
    embedder = load_clip("hf-hub:testorg/tiny-clip")
    loaded = embedder.model.state_dict()
    for name, tensor in tiny_state_dict.items():
        torch.testing.assert_close(loaded[name], tensor)


def test_load_clip_from_local_checkpoint_paths(hf_cache, tmp_path, tiny_state_dict):
    snapshot = hf_cache / "models--testorg--tiny-clip" / "snapshots" / REVISION
    hub = load_clip("hf-hub:testorg/tiny-clip")
    hub_vectors = hub.embed_images(random_frames(3))
    pixels = hub.preprocess(random_frames(3))

    # A folder with open_clip_config.json + weights.
    from_dir = load_clip(pretrained=str(snapshot))
    np.testing.assert_allclose(from_dir.embed_images(random_frames(3)), hub_vectors, atol=1e-5)

    # A bare checkpoint file for a named architecture (registered through open_clip's API).
    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    (cfg_dir / "tiny-test-vit.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg_dir)
    from_file = load_clip("tiny-test-vit", str(snapshot / "open_clip_model.safetensors"))
    assert from_file.model_id.startswith("open_clip:tiny-test-vit/file-")
    # Same weights (a bare file carries no preprocess config, so compare on the same pixels).
    np.testing.assert_allclose(from_file.forward_pixels(pixels), hub_vectors, atol=1e-5)

    # A torch .bin is loaded with weights_only=True ...
    bin_path = tmp_path / "tiny.bin"
    torch.save(tiny_state_dict, bin_path)
    from_bin = load_clip("tiny-test-vit", str(bin_path))
    np.testing.assert_allclose(from_bin.forward_pixels(pixels), hub_vectors, atol=1e-5)
    assert from_bin.model_id != from_file.model_id  # different files, different ids
    # ... so a pickle carrying arbitrary objects is refused.
    evil = tmp_path / "evil.bin"
    torch.save({"state_dict": tiny_state_dict, "payload": Preprocess(64)}, evil)
    with pytest.raises(ModelUnavailable):
        load_clip("tiny-test-vit", str(evil))


def test_missing_model_raises_fast(hf_cache, tmp_path):
    cases = [
        ("hf-hub:testorg/not-there", None),
        ("ViT-B-32", "laion2b_s34b_b79k"),  # real weights are not cached here
        ("ViT-B-32", "no-such-tag"),
        ("ViT-B-32", str(tmp_path / "missing.safetensors")),
        ("ViT-B-32", None),
    ]
    for model_name, pretrained in cases:
        start = time.monotonic()
        with pytest.raises(ModelUnavailable) as info:
            load_clip(model_name, pretrained)
        assert time.monotonic() - start < 2.0, (model_name, pretrained)
        assert info.value.reason

    # Config but no weights: open_clip would build a random model; we refuse.
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    with pytest.raises(ModelUnavailable, match="no weights"):
        load_clip(pretrained=str(empty))


def test_registry_availability_is_offline(hf_cache):
    ok, reason = registry.is_available("clip-vit-b-32-laion2b")
    assert not ok and "not in the Hugging Face cache" in reason
    assert registry.is_available("colour-layout-v1")[0]
    assert not registry.is_available("nope")[0]
    assert registry.find_cached_file("testorg/tiny-clip", ("x.bin", "open_clip_model.safetensors")).name == (
        "open_clip_model.safetensors"
    )
    spec = registry.REGISTRY["clip-vit-b-32-laion2b"]
    assert spec.source == "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K" and "MIT" in spec.license


def test_load_embedder_falls_back_loudly(hf_cache):
    embedder, warning = load_embedder("ViT-B-32", "laion2b_s34b_b79k")
    assert isinstance(embedder, ColourLayoutEmbedder) and embedder.model_id == COLOUR_LAYOUT_ID
    assert "FALLING BACK" in warning and "not in the Hugging Face cache" in warning
    with pytest.raises(ModelUnavailable):
        load_embedder("ViT-B-32", "laion2b_s34b_b79k", allow_fallback=False)
    clip, warning = load_embedder("hf-hub:testorg/tiny-clip")
    assert isinstance(clip, ClipEmbedder) and warning is None


def test_preprocess_matches_open_clip_geometry():
    """Shortest-side resize + centre crop, normalised like open_clip's eval transform."""
    pre = Preprocess(64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    image = np.zeros((90, 160, 3), np.uint8)
    image[:, 48:112] = 255  # a white band exactly as wide as the centre crop
    pixels = pre([image])
    assert pixels.shape == (1, 3, 64, 64) and pixels.dtype == np.float32
    assert pixels.min() == pytest.approx(-1.0) and pixels.max() == pytest.approx(1.0)
    assert np.mean(pixels[0, :, :, 30:34]) == pytest.approx(1.0)


def test_prefetch_propagates_errors_and_order():
    assert list(prefetch(iter(range(20)))) == list(range(20))

    def broken():
        yield 1
        raise ValueError("decode failed")

    with pytest.raises(ValueError, match="decode failed"):
        list(prefetch(broken()))


def test_read_rgb_reduced_decode(tmp_path):
    frame = np.zeros((1080, 1920, 3), np.uint8)
    frame[:, :960] = (0, 0, 255)  # BGR red left half
    path = tmp_path / "f.jpg"
    cv2.imwrite(str(path), frame)
    full = read_rgb(path)
    reduced = read_rgb(path, min_side=224)
    assert full.shape == (1080, 1920, 3) and reduced.shape == (270, 480, 3)
    assert reduced[135, 100, 0] > 200 and reduced[135, 400, 0] < 50  # RGB order


# ---------------------------------------------------------------- colour-layout fallback
def scene(background: str, character: str | None = None, shift: int = 0, seed: int = 0) -> np.ndarray:
    """A 1280x720 RGB anime-like frame: flat-shaded background + an outlined character."""
    rng = np.random.default_rng(seed)
    h, w = 720, 1280
    img = np.zeros((h, w, 3), np.uint8)
    if background == "sky":
        for y in range(h):  # blue gradient sky, green hill
            img[y] = (90 + y // 10, 160 + y // 12, 250)
        cv2.ellipse(img, (900, 180), (160, 60), 0, 0, 360, (255, 255, 255), -1)
        cv2.ellipse(img, (640, 900), (900, 320), 0, 0, 360, (70, 170, 60), -1)
    elif background == "classroom":
        img[:] = (205, 180, 140)  # beige wall, wooden floor, a board, window frames
        img[520:] = (150, 100, 60)
        cv2.rectangle(img, (200, 120), (900, 380), (40, 80, 60), -1)
        for x in range(960, 1280, 80):
            cv2.line(img, (x, 60), (x, 500), (80, 60, 40), 6)
    elif background == "night":
        img[:] = (15, 20, 60)
        for _ in range(60):
            x, y = rng.integers(0, w), rng.integers(0, 400)
            cv2.circle(img, (int(x), int(y)), 2, (255, 255, 220), -1)
        cv2.rectangle(img, (0, 500), (1280, 720), (30, 30, 40), -1)
    if character is not None:
        hair = {"red": (220, 40, 50), "blue": (40, 90, 220), "blonde": (245, 215, 110)}[character]
        cx = 640 + shift
        cv2.ellipse(img, (cx, 420), (150, 260), 0, 0, 360, (250, 225, 205), -1)  # face/body
        cv2.ellipse(img, (cx, 300), (190, 170), 0, 180, 360, hair, -1)  # hair
        cv2.ellipse(img, (cx, 420), (150, 260), 0, 0, 360, (20, 20, 20), 4)  # line art
        cv2.ellipse(img, (cx, 300), (190, 170), 0, 180, 360, (20, 20, 20), 4)
    return img


def jpeg(rgb: np.ndarray, quality: int = 40) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_colour_layout_shape_determinism_and_interface():
    embedder = ColourLayoutEmbedder()
    frames = [scene("sky"), scene("night", "red")]
    a = embedder.embed_images(frames)
    assert a.shape == (2, DIM) and DIM == 256 and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, embedder.embed_images(frames))
    assert np.isfinite(embedder.embed_images([np.zeros((10, 10, 3), np.uint8), np.full((5, 9), 128, np.uint8)])).all()
    with pytest.raises(ModelUnavailable):
        embedder.embed_texts(["anything"])


def test_colour_layout_separates_scenes_and_is_stable_under_jpeg():
    embedder = ColourLayoutEmbedder()
    names = [(bg, ch) for bg in ("sky", "classroom", "night") for ch in (None, "red", "blue")]
    clean = embedder.embed_images([scene(bg, ch) for bg, ch in names])
    noisy = embedder.embed_images([jpeg(scene(bg, ch, shift=40, seed=1), quality=35) for bg, ch in names])
    similarity = noisy @ clean.T
    # Each JPEG'd, slightly moved frame is nearest to its own clean original ...
    assert (similarity.argmax(axis=1) == np.arange(len(names))).all(), np.round(similarity, 2)
    own = np.diag(similarity)
    assert own.min() > 0.9, own
    # ... with a clear margin over every other scene.
    others = similarity.copy()
    np.fill_diagonal(others, -1)
    assert (own - others.max(axis=1)).min() > 0.02, np.round(similarity, 2)
    # Different backgrounds are far apart; the same background with different characters closer.
    by_name = {n: v for n, v in zip(names, clean)}
    assert by_name[("sky", None)] @ by_name[("night", None)] < 0.3
    same_bg = by_name[("classroom", "red")] @ by_name[("classroom", "blue")]
    diff_bg = by_name[("classroom", "red")] @ by_name[("night", "red")]
    assert same_bg > diff_bg


def test_colour_layout_embed_files(tmp_path):
    embedder = ColourLayoutEmbedder()
    paths = []
    for i, bg in enumerate(("sky", "night")):
        path = tmp_path / f"{i}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(scene(bg), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    from_files = embedder.embed_files(paths)
    from_arrays = embedder.embed_images([scene("sky"), scene("night")])
    assert (np.sum(from_files * from_arrays, axis=1) > 0.98).all()
