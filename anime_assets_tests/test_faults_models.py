"""Model-file faults (issue 10, case 6): a hub file is used only when its sha256 is known and matches.

A hub model file is trusted when its sha256 matches the digest registered for the pinned revision
(models.registry) or the one `anime-assets models pull` recorded when it downloaded the file (the
lock file, pointed at a tmp path here through ANIME_ASSETS_MODELS_LOCK). Anything else is corrupt
(a digest that does not match, or a file that is not a model at all) or unverified (no digest
known: copied into the cache by hand). `auto` never selects either one: the stage falls to the next
model here, with a reason that names the file; `models list` and `models verify` say why.

Everything runs offline: the junk and the hand copies are written into a Hugging Face cache layout
under tmp_path; "pulls" go through the real download path with huggingface_hub's download stubbed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from anime_assets import cli
from anime_assets.models import integrity, manage, registry, selection
from anime_assets.models.clip import ModelUnavailable
from anime_assets.models.segment import IsnetSegmenter, MediapipeSegmenter, load_segmenter
from anime_assets_tests.standins import REVISION, offline_hf_cache, put_in_hf_cache
from anime_assets_tests.test_models_layers import isnet_standin

pytestmark = pytest.mark.faults

NAME = "anime-seg-isnetis"
REPO = "skytnt/anime-seg"
FILE = "isnetis.onnx"
# The commit of skytnt/anime-seg's main that a real cache holds (refs/main); the registry pins it.
HUB_COMMIT = "493cb60893f47441b26ec4fb9a306bce9e342982"
JUNK = b"not an onnx model"  # 17 bytes


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    for stage in (*selection.CANDIDATES, "expression"):
        monkeypatch.delenv(selection.ENV_PREFIX + stage.upper(), raising=False)
    cache = offline_hf_cache(tmp_path, monkeypatch)
    monkeypatch.setenv("ANIME_ASSETS_MODELS_LOCK", str(tmp_path / "state" / "models.lock.json"))
    assert registry.is_available("mediapipe-selfie")[0], "run scripts/setup.sh (extracts the MediaPipe models)"
    return cache


def hand_copy(cache: Path, repo_id: str, filename: str, data: bytes, commit: str) -> Path:
    """A file put into the cache by hand (`cp` into snapshots/<commit>/), refs/main -> commit:
    no download, so no digest recorded for it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    path = repo / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return path


def tamper(path: Path) -> None:
    """Flip one byte in place (same size), as a disk error or a stray edit would."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    real = path.resolve()
    st = real.stat()
    real.write_bytes(bytes(data))
    # Same size: make sure the modification time moves on even on a coarse clock, so the
    # per-process digest cache (keyed by size and times) sees a new file version.
    os.utime(real, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _list_rows(capsys) -> dict[str, list[str]]:
    assert cli.main(["models", "list"]) == 0
    return {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()
            if line and not line.startswith("#")}


def _verdicts(name: str = NAME) -> list[str]:
    return [v for n, _, v in manage.verify([name])]


def _fake_hub(monkeypatch, build):
    """Online, with huggingface_hub's download answered from `build` (no network in tests): the file
    lands in the cache layout at the revision asked for (standins.REVISION for "main")."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(registry, "hub_unreachable_reason", lambda timeout=3.0: None)
    calls = []

    def fake_download(repo_id, filename, *, cache_dir, etag_timeout, revision=None, force_download=False, **kw):
        calls.append((repo_id, filename, revision, force_download))
        commit = REVISION if revision in (None, "main") else revision
        repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
        link = repo / "snapshots" / commit / filename
        if link.is_symlink() or link.exists():
            link.unlink()
        blob = build(repo / "blobs" / f"incoming-{len(calls)}")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
        if revision in (None, "main"):
            (repo / "refs").mkdir(exist_ok=True)
            (repo / "refs" / "main").write_text(commit)
        return str(link)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return calls


# ---------------------------------------------------------------- the fault: 17 bytes of junk
def test_junk_in_the_cache_is_corrupt_and_auto_falls_to_mediapipe(hf_cache, capsys):
    junk = hand_copy(hf_cache, REPO, FILE, JUNK, HUB_COMMIT)

    rows = _list_rows(capsys)
    assert rows[NAME][2] != "present"
    assert "corrupt" in rows[NAME][4] and str(junk) in rows[NAME][4] and "sha256" in rows[NAME][4]
    seg_stage = rows["stage:segmenter"]
    assert seg_stage[1] == "mediapipe-selfie@0.10.21"
    assert NAME in seg_stage[2] and FILE in seg_stage[2] and "corrupt" in seg_stage[2]

    r = selection.resolve("segmenter")
    assert r.model_id == "mediapipe-selfie@0.10.21" and str(junk) in r.reason

    # `models verify` fails, through the CLI.
    assert cli.main(["models", "verify"]) == 1
    out = capsys.readouterr().out
    assert any(line.startswith(NAME + "\tMISMATCH\t") and line.endswith(str(junk)) for line in out.splitlines()), out

    # The loaders check the digest before loading: "auto" falls back with the reason, by name it is refused.
    seg = load_segmenter("auto")
    assert isinstance(seg, MediapipeSegmenter) and "sha256" in seg.fallback_reason and FILE in seg.fallback_reason
    with pytest.raises(ModelUnavailable, match="sha256"):
        load_segmenter("anime-seg")


def test_the_layer_stage_runs_the_mediapipe_prior_not_motion_only(hf_cache):
    """The symptom of the issue: the layer resource loaded nothing and fell to motion-only layers."""
    from anime_assets.defs import resources

    hand_copy(hf_cache, REPO, FILE, JUNK, HUB_COMMIT)
    resources._load_layer_models.cache_clear()
    models, warnings = resources.LayerModelsResource().load()
    resources._load_layer_models.cache_clear()
    assert isinstance(models.segment, MediapipeSegmenter), warnings
    assert not any("motion against the shot plate only" in w for w in warnings), warnings
    assert any(FILE in w and "corrupt" in w and models.segment.model_id in w for w in warnings), warnings


def test_registered_digests_take_precedence_over_recorded_ones(hf_cache):
    junk = hand_copy(hf_cache, REPO, FILE, JUNK, HUB_COMMIT)
    lock = Path(integrity.lock_path())
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"version": 1, "hub": {REPO: {HUB_COMMIT: {FILE: integrity.sha256_file(junk)}}}}))
    ok, why = registry.is_available(NAME)
    assert not ok and "corrupt" in why and "registered" in why
    assert _verdicts() == ["MISMATCH"]


def test_junk_or_a_hand_copy_at_another_revision(hf_cache, capsys):
    """Not the pinned revision, nothing recorded: junk is corrupt (not an ONNX file), a real-looking
    model is unverified; neither is selected."""
    junk = hand_copy(hf_cache, REPO, FILE, JUNK, REVISION)
    ok, why = registry.is_available(NAME)
    assert not ok and "corrupt" in why and str(junk) in why and "ONNX" in why
    [verdict] = _verdicts()
    assert verdict.startswith("CORRUPT")
    assert selection.resolve("segmenter").name == "mediapipe-selfie"

    isnet_standin(junk)  # a well-formed model, copied by hand
    ok, why = registry.is_available(NAME)
    assert not ok and "not verified" in why and f"anime-assets models pull {NAME}" in why and "verify" in why
    [verdict] = _verdicts()
    assert verdict.startswith("UNVERIFIED")
    rows = _list_rows(capsys)
    assert rows[NAME][2] != "present" and "not verified" in rows[NAME][4]
    r = selection.resolve("segmenter")
    assert r.name == "mediapipe-selfie" and f"models pull {NAME}" in r.reason
    with pytest.raises(ModelUnavailable, match="not verified"):
        load_segmenter("anime-seg")


# ---------------------------------------------------------------- the pull path records digests
def test_a_pulled_file_is_recorded_and_a_later_change_makes_it_corrupt(hf_cache, monkeypatch, tmp_path):
    """A model with no registered digest (here: the anime-seg entry, unpinned for the test) is trusted
    on its first pull: `pull` downloads it and records its sha256; a later change is caught."""
    spec = registry.REGISTRY[NAME]
    monkeypatch.setitem(registry.REGISTRY, NAME, dataclasses.replace(spec, revision=None, sha256={}))
    calls = _fake_hub(monkeypatch, isnet_standin)

    [(name, ok, what)] = manage.pull([NAME])
    assert (name, ok) == (NAME, True), what
    assert calls == [(REPO, FILE, "main", False)]
    path = registry.local_files(NAME)[0]
    lock = json.loads(Path(integrity.lock_path()).read_text())
    assert lock["hub"][REPO][REVISION][FILE] == integrity.sha256_file(path)

    assert registry.is_available(NAME)[0]
    assert _verdicts() == ["ok"]
    r = selection.resolve("segmenter")
    assert r.model_id == f"{NAME}@{REVISION[:12]}" and r.reason is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert isinstance(load_segmenter("auto"), IsnetSegmenter)

    tamper(path)
    ok, why = registry.is_available(NAME)
    assert not ok and "corrupt" in why and "recorded" in why and str(path) in why
    assert _verdicts() == ["MISMATCH"]
    assert selection.resolve("segmenter").name == "mediapipe-selfie"
    seg = load_segmenter("auto")
    assert isinstance(seg, MediapipeSegmenter) and "sha256" in seg.fallback_reason
    # Offline, pull cannot fix it, and says so.
    [(_, ok, what)] = manage.pull([NAME])
    assert not ok and "HF_HUB_OFFLINE" in what


def test_pull_downloads_the_pinned_revision_and_checks_it(hf_cache, monkeypatch):
    """A pinned model is downloaded at its commit and must match the registered digest: a download
    that does not (here: a stand-in, not the real weights) is refused, not recorded, not selected."""
    spec = registry.REGISTRY[NAME]
    calls = _fake_hub(monkeypatch, isnet_standin)
    [(name, ok, what)] = manage.pull([NAME])
    assert calls == [(REPO, FILE, spec.revision, False)]
    assert not ok and "sha256" in what
    assert not Path(integrity.lock_path()).exists() or REPO not in Path(integrity.lock_path()).read_text()
    assert selection.resolve("segmenter").name == "mediapipe-selfie"


def test_pull_fetches_a_corrupt_file_again(hf_cache, monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, NAME, dataclasses.replace(registry.REGISTRY[NAME], revision=None, sha256={}))
    hand_copy(hf_cache, REPO, FILE, JUNK, REVISION)
    calls = _fake_hub(monkeypatch, isnet_standin)
    [(_, ok, what)] = manage.pull([NAME])
    assert ok, what
    assert calls == [(REPO, FILE, "main", True)]  # forced: the junk must not be taken as the download
    assert registry.is_available(NAME)[0] and _verdicts() == ["ok"]


def test_the_stand_in_helper_records_digests_like_pull(hf_cache):
    cached = put_in_hf_cache(hf_cache, REPO, FILE, isnet_standin)
    lock = json.loads(Path(integrity.lock_path()).read_text())
    assert lock["hub"][REPO][REVISION][FILE] == integrity.sha256_file(cached)
    assert registry.is_available(NAME)[0] and _verdicts() == ["ok"]
    assert selection.resolve("segmenter").name == NAME


def test_every_hub_model_is_pinned_with_digests():
    for spec in registry.REGISTRY.values():
        if not spec.source.startswith(registry.HF_PREFIX):
            continue
        assert spec.revision and len(spec.revision) == 40 and int(spec.revision, 16) >= 0, spec.name
        assert spec.files[0] in spec.sha256, spec.name  # the preferred weights file
        for required in spec.requires:
            assert required in spec.sha256, (spec.name, required)
        assert all(len(d) == 64 and int(d, 16) >= 0 for d in spec.sha256.values()), spec.name


def test_large_weights_are_hashed_once_across_processes_and_again_when_they_change(tmp_path, monkeypatch):
    """Every run worker checks the selected models; the digest of an unchanged large file is reused."""
    monkeypatch.setenv(integrity.DIGEST_CACHE_ENV, str(tmp_path / "digests.json"))
    weights = tmp_path / "model.onnx"
    weights.write_bytes(os.urandom(integrity._DIGEST_CACHE_MIN_BYTES + 1))
    first = integrity.file_sha256(weights)
    integrity._sha256_of_version.cache_clear()  # as a new process would start
    calls = []
    monkeypatch.setattr(integrity, "sha256_file", lambda p, *a: calls.append(p) or "recomputed")
    assert integrity.file_sha256(weights) == first and calls == []
    with open(weights, "r+b") as fh:
        fh.write(b"junk")
    integrity._sha256_of_version.cache_clear()
    assert integrity.file_sha256(weights) == "recomputed" and calls == [weights.resolve()]
