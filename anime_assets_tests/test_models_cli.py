"""`anime-assets models list | verify | pull` tell the truth about this machine, offline."""

from __future__ import annotations

import shutil

import pytest

from anime_assets import cli
from anime_assets.models import integrity, registry


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv(integrity.LOCK_ENV, str(tmp_path / integrity.LOCK_NAME))  # never the project's lock file
    return tmp_path


def _lines(capsys) -> dict[str, list[str]]:
    return {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()
            if line and not line.startswith("#")}


def test_list_says_what_is_here_and_why_not(offline_empty_cache, capsys):
    assert cli.main(["models", "list"]) == 0
    rows = _lines(capsys)
    stages = {k[len("stage:"):]: rows.pop(k) for k in list(rows) if k.startswith("stage:")}
    assert set(rows) == set(registry.REGISTRY)
    # What runs here, offline, with the reason the best model is not the one.
    assert stages["segmenter"][1] == "mediapipe-selfie@0.10.21" and "anime-seg-isnetis" in stages["segmenter"][2]
    assert stages["pose"][1] == "mediapipe-pose-landmark-full@0.10.21"
    assert stages["tagger"][1] == "none" and "wd-vit-tagger-v3" in stages["tagger"][2]
    assert stages["embedder"][1].startswith("colour-layout-v1@")
    assert rows["mediapipe-selfie"][2] == "present"  # extracted from the wheel by scripts/setup.sh
    assert rows["transnetv2"][2] == "present" and rows["opencv-telea"][2] == "present"
    assert rows["anime-seg-isnetis"][2] == "missing" and "not in the Hugging Face cache" in rows["anime-seg-isnetis"][4]


def test_verify_checks_digests_and_catches_a_tampered_file(offline_empty_cache, monkeypatch, capsys):
    assert cli.main(["models", "verify", "mediapipe-selfie", "transnetv2"]) == 0
    assert all(r[1] == "ok" for r in _lines(capsys).values())
    src = registry.bundled_dir(registry.MEDIAPIPE_PIN)
    copy = offline_empty_cache / "models" / src.name
    shutil.copytree(src, copy)
    target = copy / "selfie_segmentation.tflite"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    monkeypatch.setenv(registry.MODELS_DIR_ENV, str(copy.parent))
    assert cli.main(["models", "verify", "mediapipe-selfie"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "selfie_segmentation.tflite" in out


def test_pull_offline_fails_with_the_reason_and_unknown_names_are_refused(offline_empty_cache, capsys):
    assert cli.main(["models", "pull", "anime-seg-isnetis", "mediapipe-selfie"]) == 1
    rows = _lines(capsys)
    assert rows["anime-seg-isnetis"][1] == "missing" and "HF_HUB_OFFLINE" in rows["anime-seg-isnetis"][2]
    assert rows["mediapipe-selfie"][1] == "present"
    assert cli.main(["models", "list", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err
