"""Model selection: "auto" resolves from local files to the model a run will use, and each
asset's code version names its models, so changing one model changes exactly its assets."""

from __future__ import annotations

import dataclasses

import pytest
from onnx import TensorProto, helper

from anime_assets.models import integrity, registry, selection
from anime_assets_tests.standins import REVISION, offline_hf_cache, put_in_hf_cache, save_onnx


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    for stage in (*selection.CANDIDATES, "expression"):
        monkeypatch.delenv(selection.ENV_PREFIX + stage.upper(), raising=False)
    return offline_hf_cache(tmp_path, monkeypatch)


def _onnx(path):
    """A real (tiny) ONNX file: selection passes over a .onnx file that is no model."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "standin",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return save_onnx(graph, path)


def _file(content: bytes):
    def build(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path
    return build


def test_auto_resolves_to_what_is_here_and_says_why(hf_cache):
    seg = selection.resolve("segmenter")
    assert seg.name == "mediapipe-selfie" and seg.version == "0.10.21"
    assert seg.model_id == "mediapipe-selfie@0.10.21"
    assert "anime-seg-isnetis" in seg.reason and "Hugging Face cache" in seg.reason
    assert selection.resolve("inpainter").name == "opencv-telea"
    assert selection.resolve("pose").name == "mediapipe-pose-landmark-full"
    assert selection.resolve("embedder").name == "colour-layout-v1"
    tagger = selection.resolve("tagger")
    assert tagger.name == "none" and tagger.model_id == "none" and "wd-vit-tagger-v3" in tagger.reason
    faces = selection.resolve("faces")
    assert faces.model_id.startswith("animeface@2.0") and "anime-face-yolo" in faces.reason
    source, why = selection.resolve_expression("auto", tagger, selection.resolve("embedder"))
    assert source == "none" and "anime tagger" in why and "CLIP" in why


def test_a_cached_hub_model_wins_and_its_snapshot_is_its_version(hf_cache):
    put_in_hf_cache(hf_cache, "SmilingWolf/wd-vit-tagger-v3", "model.onnx", _onnx)
    assert selection.resolve("tagger").name == "none"  # the tag list is missing: not usable
    put_in_hf_cache(hf_cache, "SmilingWolf/wd-vit-tagger-v3", "selected_tags.csv", _file(b"tag_id,name,category,count\n"))
    tagger = selection.resolve("tagger")
    assert tagger.model_id == f"wd-vit-tagger-v3@{REVISION[:12]}" and tagger.reason is None
    source, why = selection.resolve_expression("auto", tagger, selection.resolve("embedder"))
    assert (source, why) == ("tagger", None)


def test_choices_from_the_environment(hf_cache, monkeypatch):
    monkeypatch.setenv("ANIME_ASSETS_POSE", "none")
    assert selection.resolve("pose").name == "none"
    monkeypatch.setenv("ANIME_ASSETS_POSE", "dwpose")  # asked by name: it is what runs (or fails loudly)
    assert selection.resolve("pose").model_id == "dwpose-ll-ucoco-384@missing"
    monkeypatch.setenv("ANIME_ASSETS_POSE", "openpose")
    with pytest.raises(ValueError, match="unknown pose 'openpose'"):
        selection.resolve("pose")
    with pytest.raises(ValueError, match="inpainter cannot be 'none'"):
        selection.resolve("inpainter", "none")


def _versions(**env):
    from anime_assets.definitions import BASE_ASSETS, model_versions, with_model_versions

    models = selection.resolve_all()
    assets = with_model_versions(BASE_ASSETS, model_versions(models, env.get("expression", "auto")))
    return {k.to_user_string(): v for a in assets for k, v in a.code_versions_by_key.items()}


def test_code_versions_change_for_exactly_the_assets_of_a_model(hf_cache, monkeypatch):
    before = _versions()
    assert before["frame_pose"] == "1|mediapipe-pose-landmark-full@0.10.21"
    assert before["character_layers"] == "1|mediapipe-selfie@0.10.21+opencv-telea@" + selection.model_version("opencv-telea")
    assert before["frame_faces"].endswith("+expr:none")

    monkeypatch.setenv("ANIME_ASSETS_POSE", "none")
    after = _versions()
    assert {k for k in before if before[k] != after[k]} == {"frame_pose"}
    monkeypatch.delenv("ANIME_ASSETS_POSE")

    # A tagger appears in the cache (`anime-assets models pull`): faces (expression) and captions.
    put_in_hf_cache(hf_cache, "SmilingWolf/wd-vit-tagger-v3", "model.onnx", _onnx)
    put_in_hf_cache(hf_cache, "SmilingWolf/wd-vit-tagger-v3", "selected_tags.csv", _file(b"tag_id,name,category,count\n"))
    pulled = _versions()
    assert {k for k in before if before[k] != pulled[k]} == {"frame_faces", "frame_captions"}
    assert pulled["frame_faces"].endswith(f"+expr:wd-vit-tagger-v3@{REVISION[:12]}")

    monkeypatch.setenv("ANIME_ASSETS_SEGMENTER", "none")
    no_seg = _versions()
    assert {k for k in pulled if pulled[k] != no_seg[k]} == {"character_layers", "effect_layers", "background_layers"}


def test_the_pinned_snapshot_names_the_version_and_a_changed_file_changes_the_choice(hf_cache, monkeypatch):
    """`models pull` downloads a pinned model at its commit (no refs/main is written for a commit):
    that snapshot is found, checked against the registered digest, and its commit is the version
    in the code versions. The file changing on disk makes "auto" (and the version) move on."""
    name = "dwpose-ll-ucoco-384"
    spec = registry.REGISTRY[name]
    weights = _onnx(hf_cache / "models--yzd-v--DWPose" / "snapshots" / spec.revision / spec.files[0])
    # Registered digest of the stand-in instead of the real weights' (which only the real file matches).
    monkeypatch.setitem(registry.REGISTRY, name, dataclasses.replace(spec, sha256={spec.files[0]: integrity.sha256_file(weights)}))
    pose = selection.resolve("pose")
    assert pose.model_id == f"{name}@{spec.revision[:12]}" and pose.reason is None
    assert _versions()["frame_pose"] == f"1|{name}@{spec.revision[:12]}"

    weights.write_bytes(weights.read_bytes() + b"\0")
    pose = selection.resolve("pose")
    assert pose.name == "mediapipe-pose-landmark-full" and "sha256" in pose.reason and str(weights) in pose.reason
    assert _versions()["frame_pose"] == "1|mediapipe-pose-landmark-full@0.10.21"


def test_registry_lists_the_new_models():
    for name in ("dwpose-ll-ucoco-384", "wd-vit-tagger-v3"):
        spec = registry.REGISTRY[name]
        assert spec.source.startswith("hf-hub:") and spec.license and spec.input_size
    assert registry.REGISTRY["wd-vit-tagger-v3"].requires == ("selected_tags.csv",)
