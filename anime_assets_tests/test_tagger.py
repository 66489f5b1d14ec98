"""WD tagger v3 loader, expression labels, face crops and CLIP zero-shot labels, offline.

The plumbing oracle (`test_oracle_expressions_on_fixture_clips`)
-----------------------------------------------------------------
The real WD tagger cannot be downloaded here, so a stand-in ONNX model with the real signature
(input "input" Nx448x448x3 float32 BGR 0..255, output "output" NxT sigmoid probabilities, tags in
`selected_tags.csv`) is saved in the Hugging Face cache layout and loaded with
`load_tagger("auto")` and HF_HUB_OFFLINE=1. What the stand-in IS: an honest template matcher
for the fixture character's mouths. Templates: the mouth window (input pixels y 250..330,
x 170..290 of the 448 input, 2x2 average-pooled) of face crops of both outfits x 4 expressions
x 3 framings (full body, medium, close-up), rendered on one background in a clip of their own,
face boxes from the real animeface detector, cropped with `face_crop` and prepared by an
independent transcription of WD's reference preprocessing (`reference_wd_preprocess`). The
graph slides them over a larger window of the input (y 200..380, x 110..340) with normalised
cross-correlation (Conv ops), takes the best position per template and the best template per
expression, lets the winner take all (sigmoid(150 * (score - best) + 2.5)) and emits the tags a
Danbooru tagger would give that drawing (normal: closed_mouth; smile: smile, open_mouth, :d;
giggle: smile, closed_eyes, ^_^, grin, teeth; surprised: surprised, :o, open_mouth), plus
constant 1girl/solo/... , a character tag and ratings. All outputs are multiplied by a gate
that is ~1 only for what the lower half of a BGR 0..255 anime face looks like in the search
window (mean red channel, index 2, above mean blue by 15 levels - the fixture faces give 33 to
67; mean level above 60 - they give 160+), so RGB order or 0..1 scaling switch it off.

It is tested on other frames: every distinct drawing of the 'sample', 'cuts' and 'drawings'
fixture clips (other backgrounds, positions, pans, two-shots), faces found by animeface, cropped
by `face_crop`, tagged by `Tagger.tags_batch`, labelled by `expression_from_tags`, against the
clips' ground truth (normal -> neutral, smile -> happy, giggle -> laughing, surprised ->
surprised). It would fail if the crop were off (mouth outside the searched window or at the
wrong scale), if the channel order, value range or padding were wrong, or if tags mapped to the
wrong labels; the negative controls in the test check that it does.

What it is NOT: a model of anime expressions. It knows one character's four mouths, drawn at
the fixture's three scales; it says nothing about the real tagger's accuracy, eyebrows, tears,
blushes or other characters. Cross-outfit templates (blue templates, green faces) do not work
with pixel templates (the outfits' faces are drawn at different angles): measured 13-15 of 20.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from anime_assets.models.clip import ModelUnavailable, load_clip
from anime_assets.models.tagger import (
    TAGGER_NAMES,
    WD_REPO,
    Tagger,
    load_tagger,
    preprocess,
)
from anime_assets.models.zeroshot import SCENE_PROMPTS, SCENE_TAGS, SHOT_TYPES, ZeroShot
from anime_assets.vision.embed import ColourLayoutEmbedder
from anime_assets.vision.expression import (
    EXPRESSION_TAGS,
    EXPRESSIONS,
    crop_square,
    expression_from_similarity,
    expression_from_tags,
    face_crop,
)
from anime_assets.vision.faces import detect_faces
from anime_assets_tests.fixtures import clips
from anime_assets_tests.standins import offline_hf_cache, put_in_hf_cache, save_onnx

open_clip = pytest.importorskip("open_clip")

FIXTURE_TO_LABEL = {"normal": "neutral", "smile": "happy", "giggle": "laughing", "surprised": "surprised"}
FIXTURE_EXPRESSIONS = tuple(FIXTURE_TO_LABEL)
CLASS_TAGS = {
    "normal": ("closed_mouth",),
    "smile": ("smile", "open_mouth", ":d"),
    "giggle": ("smile", "closed_eyes", "^_^", "grin", "teeth"),
    "surprised": ("surprised", ":o", "open_mouth"),
}
RATINGS = {"general": 0.9, "sensitive": 0.08, "questionable": 0.01, "explicit": 0.001}
CONSTANT_GENERAL = {"1girl": 0.98, "solo": 0.95, "long_hair": 0.93, "orange_hair": 0.8, "blue_eyes": 0.85, "blush": 0.2}
CHARACTERS = {"sylvie_(the_question)": 0.92, "other_girl_(series)": 0.4}
OTHER_GENERAL = ("expressionless", "tears", "crying", "angry", "sad")  # listed, never emitted
MOUTH_WINDOW = (250, 330, 170, 290)  # y0, y1, x0, x1 in the 448 input: the template
SEARCH_WINDOW = (200, 380, 110, 340)  # where the graph looks for it
POOL = 2
FRAMINGS = {
    "full": lambda outfit, expr: clips.full_body(outfit, expr, 380),
    "medium": lambda outfit, expr: clips.medium(outfit, expr, 330),
    "close": lambda outfit, expr: clips.close_up(outfit, expr, 150),
}


# ---------------------------------------------------------------- WD reference preprocessing
def reference_wd_preprocess(image: np.ndarray, size: int = 448) -> np.ndarray:
    """SmilingWolf/wd-tagger app.py `prepare_image`, transcribed (RGB/RGBA array in)."""
    from PIL import Image

    image = Image.fromarray(image).convert("RGBA")
    canvas = Image.new("RGBA", image.size, (255, 255, 255))
    canvas.alpha_composite(image)
    image = canvas.convert("RGB")
    max_dim = max(image.size)
    pad_left = (max_dim - image.size[0]) // 2
    pad_top = (max_dim - image.size[1]) // 2
    padded = Image.new("RGB", (max_dim, max_dim), (255, 255, 255))
    padded.paste(image, (pad_left, pad_top))
    if max_dim != size:
        padded = padded.resize((size, size), Image.BICUBIC)
    array = np.asarray(padded, dtype=np.float32)
    return array[:, :, ::-1]  # RGB -> BGR


# ---------------------------------------------------------------- stand-in WD tagger files
def write_tags_csv(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category) in enumerate(rows):
            writer.writerow([1000 + i, name, category, 5000 - i])
    return path


def oracle_tag_rows() -> list[tuple[str, int]]:
    general = list(CONSTANT_GENERAL)
    for tags in CLASS_TAGS.values():
        general += [t for t in tags if t not in general]
    general += [t for t in OTHER_GENERAL if t not in general]
    return [(r, 9) for r in RATINGS] + [(g, 0) for g in general] + [(c, 4) for c in CHARACTERS]


def const(name, array, dtype=TensorProto.FLOAT):
    array = np.asarray(array, np.float32 if dtype == TensorProto.FLOAT else np.int64)
    return helper.make_tensor(name, dtype, list(array.shape), array.ravel().tolist())


def oracle_standin(path: Path, templates: np.ndarray, template_class: list[int], names: list[str]) -> Path:
    """The stand-in of the module docstring. `templates`: (K, 3, h, w) BGR, pooled like the
    input; `template_class[k]`: index into FIXTURE_EXPRESSIONS."""
    k, _, th, tw = templates.shape
    n_classes, n_tags = len(FIXTURE_EXPRESSIONS), len(names)
    centred = templates - templates.mean(axis=(2, 3), keepdims=True)
    norms = np.sqrt((centred**2).sum(axis=(1, 2, 3))).reshape(1, k, 1, 1)
    member = np.full((1, k, n_classes), -10.0, np.float32)
    member[0, np.arange(k), template_class] = 0.0
    emits = np.zeros((1, n_classes, n_tags), np.float32)
    for c, expr in enumerate(FIXTURE_EXPRESSIONS):
        for tag in CLASS_TAGS[expr]:
            emits[0, c, names.index(tag)] = 1.0
    constant = np.zeros((1, n_tags), np.float32)
    for table in (RATINGS, CONSTANT_GENERAL, CHARACTERS):
        for tag, p in table.items():
            constant[0, names.index(tag)] = p
    y0, y1, x0, x1 = SEARCH_WINDOW
    nodes = [
        helper.make_node("Transpose", ["input"], ["x"], perm=[0, 3, 1, 2]),
        helper.make_node("Slice", ["x", "starts", "ends", "hw_axes"], ["region"]),  # lower face
        # gate: a BGR 0..255 anime face (red = channel 2 above blue = channel 0; bright enough)
        helper.make_node("ReduceMean", ["region", "hw_axes"], ["means"], keepdims=0),  # N x 3
        helper.make_node("MatMul", ["means", "red_minus_blue"], ["rb"]),
        helper.make_node("MatMul", ["means", "grey"], ["level"]),
        helper.make_node("Sub", ["rb", "rb_min"], ["rb0"]),
        helper.make_node("Div", ["rb0", "rb_soft"], ["rb1"]),
        helper.make_node("Sigmoid", ["rb1"], ["gate_rb"]),
        helper.make_node("Sub", ["level", "level_min"], ["lv0"]),
        helper.make_node("Div", ["lv0", "level_soft"], ["lv1"]),
        helper.make_node("Sigmoid", ["lv1"], ["gate_level"]),
        helper.make_node("Mul", ["gate_rb", "gate_level"], ["gate"]),  # N x 1
        # normalised cross-correlation of the mouth templates over the search window
        helper.make_node("Sub", ["region", "mid"], ["region0"]),
        helper.make_node("AveragePool", ["region0"], ["r"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
        helper.make_node("Conv", ["r", "templates"], ["num"]),
        helper.make_node("Conv", ["r", "box"], ["s1"], group=3),
        helper.make_node("Mul", ["r", "r"], ["rr"]),
        helper.make_node("Conv", ["rr", "box"], ["s2"], group=3),
        helper.make_node("Mul", ["s1", "s1"], ["s1sq"]),
        helper.make_node("Div", ["s1sq", "area"], ["s1sq_n"]),
        helper.make_node("Sub", ["s2", "s1sq_n"], ["var_c"]),
        helper.make_node("ReduceSum", ["var_c", "c_axis"], ["var"], keepdims=1),
        helper.make_node("Max", ["var", "eps"], ["var_pos"]),
        helper.make_node("Sqrt", ["var_pos"], ["std"]),
        helper.make_node("Mul", ["std", "tnorm"], ["den"]),
        helper.make_node("Div", ["num", "den"], ["ncc"]),
        helper.make_node("ReduceMax", ["ncc", "hw_axes"], ["best_pos"], keepdims=0),  # N x K
        # best template per expression, winner takes all
        helper.make_node("Unsqueeze", ["best_pos", "last_axis"], ["best_pos3"]),  # N x K x 1
        helper.make_node("Add", ["best_pos3", "member"], ["masked"]),  # N x K x C
        helper.make_node("ReduceMax", ["masked", "c_axis"], ["cls"], keepdims=0),  # N x C
        helper.make_node("ReduceMax", ["cls", "c_axis"], ["top"], keepdims=1),
        helper.make_node("Sub", ["cls", "top"], ["behind"]),
        helper.make_node("Mul", ["behind", "sharp"], ["behind_k"]),
        helper.make_node("Add", ["behind_k", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p_cls"]),
        # expression -> tags, constant tags, gate
        helper.make_node("Unsqueeze", ["p_cls", "last_axis"], ["p_cls3"]),  # N x C x 1
        helper.make_node("Mul", ["p_cls3", "emits"], ["per_cls"]),  # N x C x T
        helper.make_node("ReduceMax", ["per_cls", "c_axis"], ["tag_p"], keepdims=0),  # N x T
        helper.make_node("Max", ["tag_p", "constant"], ["all_p"]),
        helper.make_node("Mul", ["all_p", "gate"], ["output"]),
    ]
    inits = [
        const("hw_axes", [2, 3], TensorProto.INT64),
        const("c_axis", [1], TensorProto.INT64),
        const("last_axis", [2], TensorProto.INT64),
        const("starts", [y0, x0], TensorProto.INT64),
        const("ends", [y1, x1], TensorProto.INT64),
        const("red_minus_blue", [[-1.0], [0.0], [1.0]]),
        const("grey", [[1 / 3], [1 / 3], [1 / 3]]),
        const("rb_min", 15.0), const("rb_soft", 3.0),
        const("level_min", 60.0), const("level_soft", 5.0),
        const("mid", 128.0),
        const("templates", centred),
        const("box", np.ones((3, 1, th, tw), np.float32)),
        const("area", float(th * tw)),
        const("eps", 1.0),
        const("tnorm", norms),
        const("member", member),
        const("sharp", 150.0), const("bias", 2.5),
        const("emits", emits),
        const("constant", constant),
    ]
    graph = helper.make_graph(
        nodes, "wd-vit-tagger-v3-standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch_size", 448, 448, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch_size", n_tags])],
        initializer=inits,
    )
    return save_onnx(graph, path)


def tiny_wd_standin(path: Path, n_tags: int, batch=1) -> Path:
    """A minimal model with the WD signature (for the loader tests): per-image mean colour ->
    MatMul -> sigmoid."""
    weights = np.linspace(-0.02, 0.02, 3 * n_tags, dtype=np.float32).reshape(3, n_tags)
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),  # N x 3
        helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "wd-tiny-standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 448, 448, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, n_tags])],
        initializer=[const("axes", [1, 2], TensorProto.INT64), const("w", weights)],
    )
    return save_onnx(graph, path)


TINY_ROWS = [("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9), ("1girl", 0), ("smile", 0), ("someone_(series)", 4)]


def cache_wd(cache: Path, model_build, rows) -> Path:
    """model.onnx + selected_tags.csv of SmilingWolf/wd-vit-tagger-v3 in the HF cache."""
    put_in_hf_cache(cache, WD_REPO, "model.onnx", model_build)
    if rows is not None:
        put_in_hf_cache(cache, WD_REPO, "selected_tags.csv", lambda p: write_tags_csv(p, rows))
    return cache


# ---------------------------------------------------------------- fixture faces
def match_faces(faces: list[dict], characters: list[dict]) -> list[tuple[dict, dict]]:
    """(character, face) pairs: the one face whose centre lies in the top 60% of the box."""
    pairs = []
    for c in characters:
        x0, y0, x1, y1 = c["bbox"]
        inside = [f for f in faces if x0 <= (f["bbox"][0] + f["bbox"][2]) / 2 <= x1
                  and y0 <= (f["bbox"][1] + f["bbox"][3]) / 2 <= y0 + 0.6 * (y1 - y0)]
        if len(inside) == 1:
            pairs.append((c, inside[0]))
    return pairs


def template_crops() -> dict[tuple[str, str, str], np.ndarray]:
    """(outfit, expression, framing) -> face crop, from a clip of their own (background 'uni',
    one frame each); a framing where animeface finds no face is left out."""
    keys = [(o, e, f) for o in clips.OUTFITS for e in FIXTURE_EXPRESSIONS for f in FRAMINGS]
    spec = clips.ClipSpec(
        "expression-templates",
        tuple(clips.Shot("uni", (clips.Cel(1, (FRAMINGS[f](o, e),)),)) for o, e, f in keys),
    )
    crops = {}
    for i, key in enumerate(keys):
        rgb, _ = clips.render_frame(spec, i)
        faces = detect_faces(rgb)
        if faces:
            crops[key] = face_crop(rgb, faces[0]["bbox"])
    return crops


def clip_faces(names=("sample", "cuts", "drawings")) -> tuple[list[dict], list[str]]:
    """One frame per distinct drawing of the standard clips: its characters' faces (animeface
    box matched to the ground-truth character), with the truth and the production crop."""
    standard = clips.standard_clips()
    faces, missed = [], []
    for name in names:
        spec, gt = clips.STANDARD_SPECS[name](), standard[name][1]
        seen = set()
        for start, end, _ in gt.drawing_runs():
            i = (start + end) // 2
            frame = gt.frames[i]
            key = (frame["shot"], tuple((c["id"], c["expression"]) for c in frame["characters"]))
            if frame["kind"] != "normal" or key in seen:
                continue
            seen.add(key)
            rgb, _ = clips.render_frame(spec, i)
            pairs = match_faces(detect_faces(rgb), frame["characters"])
            found = {c["id"] for c, _ in pairs}
            missed += [f"{name}#{i} {c['outfit']} {c['expression']}" for c in frame["characters"] if c["id"] not in found]
            for c, face in pairs:
                faces.append(dict(clip=name, frame=i, outfit=c["outfit"], truth=FIXTURE_TO_LABEL[c["expression"]],
                                  bbox=face["bbox"], rgb=rgb, crop=face_crop(rgb, face["bbox"])))
    return faces, missed


def mouth_templates(crops) -> tuple[np.ndarray, list[int]]:
    y0, y1, x0, x1 = MOUTH_WINDOW
    templates, classes = [], []
    for (outfit, expr, framing), crop in sorted(crops.items()):
        window = reference_wd_preprocess(crop)[y0:y1, x0:x1]  # h x w x 3, BGR
        h, w = window.shape[0] // POOL, window.shape[1] // POOL
        pooled = window[: h * POOL, : w * POOL].reshape(h, POOL, w, POOL, 3).mean(axis=(1, 3))
        templates.append(pooled.transpose(2, 0, 1))
        classes.append(FIXTURE_EXPRESSIONS.index(expr))
    return np.stack(templates).astype(np.float32), classes


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    start = time.perf_counter()
    crops = template_crops()
    templates, classes = mouth_templates(crops)
    rows = oracle_tag_rows()
    folder = tmp_path_factory.mktemp("wd-oracle")
    model = oracle_standin(folder / "model.onnx", templates, classes, [n for n, _ in rows])
    faces, missed = clip_faces()
    return dict(model=model, rows=rows, faces=faces, missed=missed, n_templates=len(crops),
                build_s=time.perf_counter() - start)


@pytest.fixture
def oracle_tagger(oracle, tmp_path, monkeypatch) -> Tagger:
    def copy_model(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(oracle["model"], path)
        return path

    cache_wd(offline_hf_cache(tmp_path, monkeypatch), copy_model, oracle["rows"])
    return load_tagger("auto")


# ---------------------------------------------------------------- the oracle
def test_oracle_expressions_on_fixture_clips(oracle, oracle_tagger, capsys):
    """Fixture truth through detect -> face_crop -> load_tagger('auto') -> tags -> label."""
    tagger, faces = oracle_tagger, oracle["faces"]
    assert tagger.model_id.startswith("wd-vit-tagger-v3@") and tagger.fallback_reason is None
    assert tagger.input_size == 448 and tagger.batch_size == 8  # dynamic batch dim: batched
    assert len(faces) >= 45 and len(oracle["missed"]) <= 2, oracle["missed"]
    assert {f["truth"] for f in faces} == set(FIXTURE_TO_LABEL.values())

    start = time.perf_counter()
    tags = tagger.tags_batch([f["crop"] for f in faces])
    tag_s = time.perf_counter() - start
    labels = [expression_from_tags(t)[0] for t in tags]
    wrong = [(f["clip"], f["frame"], f["outfit"], f["truth"], got) for f, got in zip(faces, labels) if got != f["truth"]]
    accuracy = 1 - len(wrong) / len(faces)
    with capsys.disabled():
        print(f"\n[oracle] {len(faces) - len(wrong)}/{len(faces)} faces labelled right ({accuracy:.1%}); "
              f"missed by animeface: {oracle['missed']}; wrong: {wrong}; {oracle['n_templates']} templates, "
              f"built in {oracle['build_s']:.1f}s; tagging {1000 * tag_s / len(faces):.0f} ms/face")
    assert accuracy >= 0.95, wrong

    # The tags themselves: one face, like a real tagger's output.
    first = tags[0]
    assert [t for t, _ in first["character"]] == ["sylvie_(the_question)"]  # 0.4 < 0.85 left out
    assert set(first["rating"]) == set(RATINGS) and first["rating"]["general"] == pytest.approx(0.9, abs=0.02)
    probs = [p for _, p in first["general"]]
    assert probs == sorted(probs, reverse=True) and min(probs) >= 0.35
    assert "blush" not in dict(first["general"])  # 0.2: below the threshold
    # Batched == one by one.
    one = tagger.tags(faces[0]["crop"])
    assert [t for t, _ in one["general"]] == [t for t, _ in first["general"]]


def test_oracle_negative_controls(oracle, oracle_tagger):
    """The oracle is not fooled: wrong channel order, a 0..1 range, or a wrong crop give wrong
    labels - so the test above fails if production got any of these wrong. (A wrong tag mapping
    fails it too: checked by hand, e.g. ':d' counted as laughing -> 37/53.)"""
    tagger, faces = oracle_tagger, oracle["faces"]
    subset = faces[::4]
    run = tagger.session.run

    def labels_for(batch: np.ndarray) -> list:
        probs = np.asarray(run(["output"], {"input": batch.astype(np.float32)})[0])
        return [expression_from_tags(tagger.threshold(p))[0] for p in probs]

    good = np.stack([reference_wd_preprocess(f["crop"]) for f in subset])
    truth = [f["truth"] for f in subset]
    assert labels_for(good) == truth  # the reference preprocessing is right
    assert labels_for(good[..., ::-1]) == [None] * len(subset)  # RGB instead of BGR
    assert labels_for(good / 255.0) == [None] * len(subset)  # 0..1 instead of 0..255

    def accuracy(crops) -> float:
        got = labels_for(np.stack([reference_wd_preprocess(c) for c in crops]))
        return float(np.mean([g == t for g, t in zip(got, truth)]))

    # A crop at the wrong scale or not centred on the face box loses the mouth.
    assert accuracy([face_crop(f["rgb"], f["bbox"], scale=2.6) for f in subset]) <= 0.6
    shifted = [face_crop(f["rgb"], [f["bbox"][0], f["bbox"][1] + (f["bbox"][3] - f["bbox"][1]) // 2,
                                     f["bbox"][2], f["bbox"][3] + (f["bbox"][3] - f["bbox"][1]) // 2]) for f in subset]
    assert accuracy(shifted) <= 0.6


# ---------------------------------------------------------------- preprocessing
def test_preprocess_is_wd_reference_bit_for_bit():
    art = clips.load_art()
    rng = np.random.default_rng(0)
    sprite = np.ascontiguousarray(art.sprites[("green", "giggle")])  # RGBA, 525 x 342: alpha + pad + shrink
    frame = np.ascontiguousarray(art.backgrounds["meadow"][:300, :800])  # wide RGB: pad top/bottom
    small = rng.integers(0, 256, (57, 91, 3), dtype=np.uint8)  # enlarge
    exact = rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)  # no resize
    for image in (sprite, frame, small, exact):
        ours = preprocess(image)
        assert ours.shape == (448, 448, 3) and ours.dtype == np.float32
        np.testing.assert_array_equal(ours, reference_wd_preprocess(image))
    # The conventions, spelled out: BGR, 0..255, white padding.
    red = np.zeros((100, 200, 3), np.uint8)
    red[..., 0] = 255
    x = preprocess(red)
    assert x[224, 224].tolist() == [0.0, 0.0, 255.0]  # B, G, R
    assert x[0, 0].tolist() == [255.0, 255.0, 255.0]  # padded white
    transparent = np.zeros((10, 10, 4), np.uint8)
    assert (preprocess(transparent) == 255.0).all()  # alpha 0 over white


def test_preprocess_timing(capsys):
    rng = np.random.default_rng(1)
    frame = cv2.resize(rng.integers(0, 256, (270, 480, 3), dtype=np.uint8), (1920, 1080))
    crop = frame[100:260, 600:760].copy()
    timings = {}
    for name, image in (("1920x1080 frame", frame), ("160 px face crop", crop)):
        preprocess(image)
        start = time.perf_counter()
        for _ in range(5):
            preprocess(image)
        timings[name] = 1000 * (time.perf_counter() - start) / 5
    with capsys.disabled():
        print("\n[preprocess] " + ", ".join(f"{k}: {v:.1f} ms" for k, v in timings.items()))
    assert timings["160 px face crop"] < 50


# ---------------------------------------------------------------- expression rules
def test_expression_rules_per_label():
    cases = {
        "neutral": {"expressionless": 0.8},
        "happy": {"smile": 0.9, "closed_mouth": 0.7},
        "laughing": {"smile": 0.9, "open_mouth": 0.8, "closed_eyes": 0.7},
        "sad": {"sad": 0.7, "frown": 0.5},
        "crying": {"tears": 0.8, "sad": 0.6},
        "angry": {"angry": 0.6, "v-shaped_eyebrows": 0.7},
        "surprised": {":o": 0.8, "open_mouth": 0.9},
        "embarrassed": {"embarrassed": 0.6, "blush": 0.9},
        "scared": {"scared": 0.7, "trembling": 0.5},
    }
    for label, tags in cases.items():
        got, scores, reason = expression_from_tags(tags)
        assert (got, reason) == (label, None), (label, scores)
        assert list(scores) == list(EXPRESSIONS) and all(0.0 <= s <= 1.0 for s in scores.values())
    assert set(EXPRESSION_TAGS) == set(EXPRESSIONS)


def test_expression_rules_specifics():
    # laughing needs an open-mouth smile AND closed eyes; either alone is happy.
    assert expression_from_tags({":d": 0.9})[0] == "happy"
    assert expression_from_tags({"smile": 0.9, "closed_eyes": 0.8, "closed_mouth": 0.8})[0] == "happy"
    assert expression_from_tags({"grin": 0.6, "^_^": 0.9})[0] == "laughing"
    assert expression_from_tags({"laughing": 0.5, "smile": 0.9})[0] == "laughing"
    # crying beats sad when tears are there; tears with a smile are happy tears.
    assert expression_from_tags({"sad": 0.9, "tears": 0.5})[0] == "crying"
    assert expression_from_tags({"sad": 0.9, "tearing_up": 0.3})[0] == "sad"
    assert expression_from_tags({"tears": 0.7, "smile": 0.9})[0] == "happy"
    # neutral only with evidence, never as a default.
    label, scores, reason = expression_from_tags({"1girl": 0.99, "long_hair": 0.9, "blush": 0.5})
    assert label is None and reason == "no expression tag above 0.35" and scores["neutral"] == 0.0
    assert expression_from_tags({"closed_mouth": 0.8})[0] == "neutral"
    assert expression_from_tags({"closed_mouth": 0.8, "smile": 0.7})[0] == "happy"
    assert expression_from_tags({"closed_mouth": 0.9, "angry": 0.4})[0] == "neutral"  # 0.6 vs 0.4
    assert expression_from_tags({})[0] is None
    # blush alone is weak evidence; an embarrassed face needs more.
    assert expression_from_tags({"blush": 0.6})[0] is None
    # min_score and the reason follow it.
    assert expression_from_tags({"smile": 0.4}, min_score=0.5) == (None, expression_from_tags({"smile": 0.4})[1],
                                                                    "no expression tag above 0.5")
    # tags() output and (tag, p) pairs are accepted.
    tags_out = {"general": [("smile", 0.8), (":d", 0.7)], "character": [], "rating": {"general": 0.9}}
    assert expression_from_tags(tags_out)[0] == "happy"
    assert expression_from_tags([(":o", 0.6)])[0] == "surprised"


def test_expression_from_similarity():
    sims = np.full(len(EXPRESSIONS), 0.20)
    sims[EXPRESSIONS.index("sad")] = 0.25
    label, scores = expression_from_similarity(sims)
    assert label == "sad" and list(scores) == list(EXPRESSIONS)
    assert sum(scores.values()) == pytest.approx(1.0)
    assert scores["sad"] == pytest.approx(np.exp(5) / (np.exp(5) + 8))  # logit scale 100
    flat = expression_from_similarity(sims, logit_scale=0.0)[1]
    assert all(v == pytest.approx(1 / 9) for v in flat.values())
    with pytest.raises(ValueError):
        expression_from_similarity(np.zeros(4))


# ---------------------------------------------------------------- face crop
def test_face_crop_geometry_and_padding():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, :, 0] = np.arange(200, dtype=np.uint8)[None, :]  # red = x
    frame[:, :, 1] = np.arange(100, dtype=np.uint8)[:, None]  # green = y
    crop = face_crop(frame, (80, 30, 120, 50), scale=1.5)  # 40 x 20 box -> 60 px square
    assert crop.shape == (60, 60, 3) and crop.dtype == np.uint8
    assert crop_square((80, 30, 120, 50), 1.5) == (70, 10, 60)
    assert crop[0, 0, :2].tolist() == [70, 10] and crop[-1, -1, :2].tolist() == [129, 69]
    # the box centre sits at the crop centre
    assert crop[30, 30, :2].tolist() == [100, 40]
    # leaving the frame: white by default, edge pixels on request
    corner = face_crop(frame, (0, 0, 20, 20))  # 32 px square from (-6, -6)
    assert corner.shape == (32, 32, 3)
    assert (corner[:6] == 255).all() and (corner[:, :6] == 255).all()
    assert corner[6, 6, :2].tolist() == [0, 0]
    edged = face_crop(frame, (0, 0, 20, 20), pad="edge")
    assert edged[0, 0, :2].tolist() == [0, 0] and edged[0, 10, :2].tolist() == [4, 0]
    # RGBA: composited over white
    rgba = np.zeros((50, 50, 4), np.uint8)
    assert (face_crop(rgba, (10, 10, 40, 40)) == 255).all()
    with pytest.raises(ValueError):
        face_crop(frame, (10, 10, 10, 20))
    with pytest.raises(ValueError):
        face_crop(frame, (500, 500, 520, 520))


def test_face_crop_contains_the_fixture_face():
    """On a sprite, the crop of the detected face holds the whole committed face box."""
    sprite = clips.load_art().sprites[("blue", "smile")]
    alpha = sprite[:, :, 3:4] / 255.0
    rgb = (sprite[:, :, :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    face = detect_faces(rgb)[0]["bbox"]
    left, top, side = crop_square(face)
    fx0, fy0, fx1, fy1 = clips.FACE_BOX
    assert left <= fx0 and top <= fy0 and left + side >= fx1 and top + side >= fy1


# ---------------------------------------------------------------- loader
def test_load_tagger_offline_and_its_failures(tmp_path, monkeypatch):
    cache = offline_hf_cache(tmp_path, monkeypatch)
    with pytest.raises(ModelUnavailable) as info:
        load_tagger("auto")
    reason = info.value.reason
    assert WD_REPO in reason and "HF_HUB_OFFLINE" in reason and "no offline tagger fallback" in reason
    with pytest.raises(ModelUnavailable, match="turned off"):
        load_tagger("none")
    with pytest.raises(ValueError, match="unknown tagger"):
        load_tagger("deepdanbooru")
    assert TAGGER_NAMES == ("auto", "wd-vit-tagger-v3", "none")

    # model.onnx cached without its tag list
    cache_wd(cache, lambda p: tiny_wd_standin(p, len(TINY_ROWS)), None)
    with pytest.raises(ModelUnavailable) as info:
        load_tagger("wd")
    assert "selected_tags.csv" in info.value.reason

    # both files: loads, with the tag list and categories; fixed batch 1 -> one at a time
    put_in_hf_cache(cache, WD_REPO, "selected_tags.csv", lambda p: write_tags_csv(p, TINY_ROWS))
    tagger = load_tagger("wd-vit-tagger-v3")
    assert tagger.names == [n for n, _ in TINY_ROWS]
    assert tagger.categories.tolist() == [9, 9, 9, 9, 0, 0, 4]
    assert tagger.batch_size == 1 and tagger.input_size == 448
    images = [np.full((30, 40, 3), v, np.uint8) for v in (0, 128, 255)]
    probs = tagger.predict(images)
    assert probs.shape == (3, len(TINY_ROWS)) and probs.dtype == np.float32
    assert np.all((probs > 0) & (probs < 1)) and not np.allclose(probs[0], probs[2])
    out = tagger.tags(images[1], general_threshold=0.0, character_threshold=0.0)
    assert {t for t, _ in out["general"]} == {"1girl", "smile"} and [t for t, _ in out["character"]] == ["someone_(series)"]
    assert list(out["rating"]) == ["general", "sensitive", "questionable", "explicit"]
    assert tagger.predict([]).shape == (0, len(TINY_ROWS))


def test_load_tagger_from_a_folder(tmp_path, monkeypatch):
    offline_hf_cache(tmp_path, monkeypatch)
    folder = tmp_path / "wd"
    tiny_wd_standin(folder / "model.onnx", len(TINY_ROWS), batch="N")
    with pytest.raises(ModelUnavailable, match="selected_tags.csv"):
        load_tagger(path=folder)
    write_tags_csv(folder / "selected_tags.csv", TINY_ROWS)
    tagger = load_tagger(path=folder)
    assert tagger.batch_size == 8 and tagger.model_id.startswith("wd-vit-tagger-v3@")
    assert load_tagger(path=folder / "model.onnx").model_id == tagger.model_id
    with pytest.raises(ModelUnavailable, match="does not exist"):
        load_tagger(path=tmp_path / "nowhere")
    # a tag list that does not fit the model
    write_tags_csv(folder / "selected_tags.csv", TINY_ROWS[:-1])
    with pytest.raises(ModelUnavailable, match="outputs 7 tags"):
        load_tagger(path=folder)


# ---------------------------------------------------------------- CLIP zero-shot
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def cache_tiny_clip(cache: Path) -> str:
    """A random-weight open_clip model in the HF cache as testorg/tiny-clip (like test_embed.py);
    returns its open_clip name."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = {k: v.clone().contiguous() for k, v in open_clip.CLIP(**TINY_CFG).state_dict().items()}
    config = {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}

    def write_json(p):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(config))
        return p

    def write_weights(p):
        p.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(p))
        return p

    put_in_hf_cache(cache, "testorg/tiny-clip", "open_clip_config.json", write_json)
    put_in_hf_cache(cache, "testorg/tiny-clip", "open_clip_model.safetensors", write_weights)
    return "hf-hub:testorg/tiny-clip"


@pytest.fixture
def tiny_clip(tmp_path, monkeypatch):
    """The tiny CLIP loaded offline through load_clip."""
    name = cache_tiny_clip(offline_hf_cache(tmp_path, monkeypatch))
    return load_clip(name, num_threads=2, batch_size=4)


def test_zero_shot_with_a_tiny_clip(tiny_clip):
    calls = []
    embed_texts = tiny_clip.embed_texts
    tiny_clip.embed_texts = lambda texts: (calls.append(len(texts)), embed_texts(texts))[1]
    zs = ZeroShot(tiny_clip)
    assert zs.model_id == "zero-shot:open_clip:hf-hub:testorg/tiny-clip"
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (80, 80, 3), dtype=np.uint8) for _ in range(5)]
    frames = [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in range(3)]

    calls.clear()
    results = zs.expressions(crops)
    assert len(results) == 5 and len(calls) == 1  # one text batch for the whole vocabulary
    for label, scores in results:
        assert label in EXPRESSIONS and list(scores) == list(EXPRESSIONS)
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
        assert label == max(scores, key=scores.get)
    assert zs.expressions(crops) == results and len(calls) == 1  # deterministic, text cached
    assert zs.expressions([]) == []

    scenes = zs.scene_tags(frames, top_k=3, min_prob=0.0)
    assert len(scenes) == 3 and all(len(s) == 3 for s in scenes)
    for tags in scenes:
        assert all(t in SCENE_TAGS for t, _ in tags)
        assert [p for _, p in tags] == sorted((p for _, p in tags), reverse=True)
    probs = zs.probabilities(frames, "scenes", SCENE_PROMPTS)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert all(p >= 0.9 for s in zs.scene_tags(frames, top_k=2, min_prob=0.9) for _, p in s)
    shots = zs.shot_types(frames)
    assert len(shots) == 3 and all(t in SHOT_TYPES and 0 < p <= 1 for t, p in shots)
    assert len(calls) == 3  # expressions, scenes, shots: once each

    # stored image vectors instead of images: same answer, no image tower
    vectors = tiny_clip.embed_images(frames)
    assert zs.scene_tags(vectors, top_k=3, min_prob=0.0) == scenes
    assert zs.shot_types(vectors) == shots


def test_zero_shot_refuses_embedders_without_text():
    with pytest.raises(ModelUnavailable, match="text tower") as info:
        ZeroShot(ColourLayoutEmbedder())
    assert "offline:colour-layout-v1" in info.value.reason

    class NoTokenizer:
        model_id = "open_clip:no-tokenizer"

        def embed_images(self, images):
            return np.zeros((len(images), 4), np.float32)

        def embed_texts(self, texts):
            raise ModelUnavailable(f"{self.model_id} has no tokenizer")

    with pytest.raises(ModelUnavailable, match="no tokenizer"):
        ZeroShot(NoTokenizer())
