"""Helpers for tiny stand-in models: real file formats and signatures, saved the way the Hugging
Face hub caches them, so the production loaders run against them with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnx
from onnx import helper

from anime_assets.models import integrity, registry

REVISION = "fedcba9876543210fedcba9876543210fedcba98"


def save_onnx(graph, path: Path, opset: int = 18) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def put_in_hf_cache(cache: Path, repo_id: str, filename: str, build) -> Path:
    """Save a file the way huggingface_hub caches it: blob + snapshot symlink + refs/main, at the
    stand-in commit REVISION (never a registry-pinned one, whose registered digests only the real
    weights match), and record its sha256 the way `models pull` does after a download
    (registry.record_download, into the lock file offline_hf_cache points at a tmp path).
    `build(path)` writes the file at `path` and returns it. Several files of one repo share the
    snapshot."""
    if not os.environ.get(integrity.LOCK_ENV):
        raise RuntimeError(f"set {integrity.LOCK_ENV} to a tmp path first (offline_hf_cache does): "
                           "the stand-in's digest is recorded there")
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    tmp = build(repo / "tmp" / Path(filename).name)
    blob = repo / "blobs" / integrity.sha256_file(tmp)
    blob.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(blob)
    shutil.rmtree(repo / "tmp")
    snapshot = repo / "snapshots" / REVISION
    link = snapshot / filename  # a file in a folder of the repo links from one level deeper
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    registry.record_download(repo_id, snapshot / filename)
    return snapshot / filename


def offline_hf_cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty Hugging Face cache under tmp_path, offline mode on, and an empty models lock file
    (the digests `models pull` records) there too."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv(integrity.LOCK_ENV, str(tmp_path / "hf" / integrity.LOCK_NAME))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache
