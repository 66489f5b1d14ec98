"""Issue 10, case 5: `export kohya OUT --overwrite` replaces only what the earlier export wrote.

export.json lists every file the export wrote (path, size, sha256) and the folders it made; with
overwrite the old list is checked first (ours, well-formed, every path inside OUT, no symbolic
links on the way, every listed file unchanged) and then only those files are replaced or removed.
Files the user added (beside the export and inside its own folders) stay byte for byte.  A file of
the list the user changed, or a user file where the new export writes, refuses the overwrite with
one line naming it, and nothing is touched.  The samples are test_export.py's: a rendered two-shot
with exact instance masks.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anime_assets.export import ExportError, export_kohya
from anime_assets.export import kohya, owned
from anime_assets_tests.test_export import _tree, frame_files, samples  # noqa: F401 (fixtures)

pytestmark = pytest.mark.faults


def _snapshot(root: Path) -> dict:
    """Every entry under `root` (links not followed): a file's bytes, "dir", or "link -> target"."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                snap[rel] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                snap[rel] = "dir"
            else:
                snap[rel] = p.read_bytes()
    return snap


def _manifest(out: Path) -> dict:
    return json.loads((out / "export.json").read_text(encoding="utf-8"))


def _listed(out: Path) -> dict:
    return {e["path"]: e for e in _manifest(out)["files"]}


def _png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(path)


def _one_line(err) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def test_overwrite_keeps_user_files_and_replaces_only_its_own(tmp_path, samples):  # noqa: F811
    out = tmp_path / "sylvie"
    export_kohya(samples, out, name="frames")  # 1_Sylvie_Green, 4_Sylvie_Blue, 2_frames
    first = _listed(out)
    assert {"dataset_config.toml", "README.txt"} <= set(first) and "export.json" not in first
    for rel, e in first.items():  # the list is what is on disk
        data = (out / rel).read_bytes()
        assert e["size"] == len(data) and e["sha256"] == hashlib.sha256(data).hexdigest()
    man = _manifest(out)
    assert man["format"] == "anime_assets.kohya" and man["format_version"] == 2 and man["state"] == "complete"
    assert {"img", "img/1_Sylvie_Green", "mask/2_frames"} <= set(man["dirs"])

    # the user's files: beside the export, inside its folders, and a folder of their own in one
    (out / "output").mkdir()
    (out / "output" / "my_lora.safetensors").write_bytes(os.urandom(4096))
    (out / "notes.md").write_text("epoch 10 looked best\n")
    _png(out / "img" / "1_Sylvie_Green" / "extra_user.png", 1)
    (out / "img" / "1_Sylvie_Green" / "extra_user.txt").write_text("Sylvie Green, my own caption\n")
    _png(out / "img" / "4_Sylvie_Blue" / "extra_user.png", 2)  # a folder the second export drops
    (out / "mask" / "2_frames" / "mine").mkdir()
    (out / "mask" / "2_frames" / "mine" / "a.bin").write_bytes(b"\x00\x01")
    user = {rel: v for rel, v in _snapshot(out).items()
            if rel not in first and rel not in man["dirs"] and rel != "export.json"}
    user_files = {rel for rel, v in user.items() if isinstance(v, bytes)}
    assert user_files == {"output/my_lora.safetensors", "notes.md", "img/1_Sylvie_Green/extra_user.png",
                          "img/1_Sylvie_Green/extra_user.txt", "img/4_Sylvie_Blue/extra_user.png",
                          "mask/2_frames/mine/a.bin"}

    # the second export: only Sylvie Green, with a trigger (every caption changes)
    rep = export_kohya(samples[:4], out, overwrite=True, trigger="sylv_anime")
    assert rep.groups == {"Sylvie_Green": (4, 1)}
    after = _snapshot(out)
    for rel, v in user.items():  # the user's files and folders, byte for byte
        assert after.get(rel) == v, rel
    second = _listed(out)
    for rel, e in second.items():  # the exported files are the new ones
        data = (out / rel).read_bytes()
        assert e["sha256"] == hashlib.sha256(data).hexdigest()
    for cap in (out / "img" / "1_Sylvie_Green").glob("ep01*.txt"):
        assert cap.read_text().startswith("sylv_anime, Sylvie Green, ")
    # same files as a fresh export of the same samples (the config names other absolute paths)
    fresh = tmp_path / "fresh"
    export_kohya(samples[:4], fresh, trigger="sylv_anime")
    assert set(second) == set(_listed(fresh))
    for rel, e in _listed(fresh).items():
        if rel not in ("dataset_config.toml", "README.txt"):
            assert second[rel]["sha256"] == e["sha256"], rel
    # the first export's files the second does not write are gone, and its emptied folders
    stale = set(first) - set(second)
    assert stale and not [rel for rel in stale if os.path.lexists(out / rel)]
    assert not (out / "img" / "2_frames").exists() and not (out / "mask" / "4_Sylvie_Blue").exists()
    # exactly: the new export, the user's files, the folders holding them; nothing else
    holders = {"/".join(rel.split("/")[:i]) for rel in user for i in range(1, rel.count("/") + 1)}
    expect = set(second) | set(_manifest(out)["dirs"]) | set(user) | holders | {"export.json"}
    assert set(after) == expect
    assert {"img/4_Sylvie_Blue", "mask/2_frames"} <= holders - set(_manifest(out)["dirs"])  # kept for the user
    assert sorted(p.name for p in (out / "img" / "4_Sylvie_Blue").iterdir()) == ["extra_user.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "sylvie"]  # no temp folders left
    # and again: the user's files are still not the export's
    export_kohya(samples, out, overwrite=True)
    assert all(_snapshot(out).get(rel) == v for rel, v in user.items())
    assert not set(_listed(out)) & user_files


@pytest.mark.parametrize("text", [
    '{"not": "ours"}',
    "not json at all",
    "[1, 2]",
    '{"format": "anime_assets.kohya", "format_version": 1, "samples": []}',  # the old format: no file list
    '{"format": "anime_assets.kohya", "format_version": 99, "files": [], "dirs": []}',
    '{"format": "anime_assets.kohya", "format_version": 2, "state": "complete", "dirs": []}',
    '{"format": "anime_assets.kohya", "format_version": 2, "state": "complete", "dirs": [],'
    ' "files": [{"path": "img/a.png", "size": "12", "sha256": "00"}]}',
    '{"format": "anime_assets.kohya", "format_version": 2, "state": "complete", "dirs": [],'
    ' "files": [{"path": "notes.md", "size": 3, "sha256": "' + "0" * 64 + '"},'
    ' {"path": "notes.md", "size": 3, "sha256": "' + "0" * 64 + '"}]}',
], ids=["not-ours", "not-json", "a-list", "version-1", "version-99", "no-files", "bad-entry", "twice"])
def test_foreign_or_malformed_manifest_refused_and_nothing_touched(tmp_path, samples, text):  # noqa: F811
    out = tmp_path / "out"
    export_kohya(samples[:2], out)
    (out / "notes.md").write_text("mine\n")
    (out / "export.json").write_text(text)
    before = _snapshot(out)
    with pytest.raises(ExportError) as err:
        export_kohya(samples, out, overwrite=True)
    msg = _one_line(err)
    assert "export.json" in msg and str(out) in msg
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _poke(out: Path, entry: dict) -> None:
    man = _manifest(out)
    man["files"].append(entry)
    (out / "export.json").write_text(json.dumps(man))


@pytest.mark.parametrize("how", ["dotdot", "inner-dotdot", "absolute", "backslash", "symlink-dir", "symlink-file"])
def test_manifest_paths_outside_out_refused(tmp_path, samples, how):  # noqa: F811
    out = tmp_path / "out"
    export_kohya(samples[:2], out)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("not the export's\n")
    right = {"size": victim.stat().st_size, "sha256": hashlib.sha256(victim.read_bytes()).hexdigest()}
    if how == "dotdot":
        _poke(out, {"path": "../outside/victim.txt", **right})
    elif how == "inner-dotdot":
        _poke(out, {"path": "img/../../outside/victim.txt", **right})
    elif how == "absolute":
        _poke(out, {"path": str(victim), **right})
    elif how == "backslash":
        _poke(out, {"path": "..\\outside\\victim.txt", **right})
    elif how == "symlink-dir":  # a listed path reached through a link out of OUT
        (out / "img" / "link").symlink_to(outside, target_is_directory=True)
        _poke(out, {"path": "img/link/victim.txt", **right})
    else:  # a listed file replaced by a link to a file outside (same size and digest)
        rel = next(r for r in _listed(out) if r.endswith(".txt") and r.startswith("img/"))
        (out / rel).unlink()
        (out / rel).symlink_to(victim)
        man = _manifest(out)
        for e in man["files"]:
            if e["path"] == rel:
                e.update(right)
        (out / "export.json").write_text(json.dumps(man))
    before = _snapshot(out)
    with pytest.raises(ExportError) as err:
        export_kohya(samples, out, overwrite=True)
    _one_line(err)
    assert _snapshot(out) == before
    assert victim.read_text() == "not the export's\n" and sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "outside"]


def test_changed_listed_file_refuses_the_overwrite(tmp_path, samples):  # noqa: F811
    out = tmp_path / "out"
    export_kohya(samples, out)
    cap = next(r for r in _listed(out) if r.startswith("img/4_Sylvie_Blue/") and r.endswith(".txt"))
    (out / cap).write_text("Sylvie Blue, hand-fixed caption\n")  # the user's edit of a file we wrote
    (out / "notes.md").write_text("mine\n")
    before = _snapshot(out)
    # refused, naming the file, whether or not the new export writes that file again
    for again in (samples, samples[:4]):
        with pytest.raises(ExportError, match="changed since anime_assets wrote it") as err:
            export_kohya(again, out, overwrite=True)
        assert cap in _one_line(err)
        assert _snapshot(out) == before
    # same size, other bytes: the digest notices
    (out / cap).write_bytes(bytes(b ^ 1 if i == 0 else b for i, b in enumerate((out / cap).read_bytes())))
    before = _snapshot(out)
    with pytest.raises(ExportError, match="changed since"):  # (noticed after staging: sizes are checked first)
        export_kohya(samples, out, overwrite=True)
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # the user moves their version out: the overwrite goes ahead and keeps their other files
    os.replace(out / cap, tmp_path / "my_caption.txt")
    export_kohya(samples, out, overwrite=True)
    assert (out / cap).is_file() and (out / "notes.md").read_text() == "mine\n"
    assert (tmp_path / "my_caption.txt").read_bytes().startswith(b"Ry")  # "S" ^ 1


def test_user_file_where_the_new_export_writes_refused(tmp_path, samples, monkeypatch):  # noqa: F811
    out = tmp_path / "out"
    export_kohya(samples[:4], out, name="frames")  # Sylvie Green only
    # the next export adds 4_Sylvie_Blue and 2_frames: a user file already sits at one of its names
    (out / "img" / "2_frames").mkdir()
    (out / "img" / "2_frames" / "ep01_s003_f000300.txt").write_text("mine\n")
    before = _snapshot(out)
    rendered = []
    monkeypatch.setattr(kohya, "render_sample", lambda *a, **k: rendered.append(a) or 1 / 0)
    with pytest.raises(ExportError, match="not written by anime_assets") as err:
        export_kohya(samples, out, name="frames", overwrite=True)
    assert "img/2_frames/ep01_s003_f000300.txt" in _one_line(err)
    assert _snapshot(out) == before and not rendered  # refused before rendering anything
    # a user file where a folder of the export goes
    (out / "img" / "2_frames" / "ep01_s003_f000300.txt").unlink()
    (out / "mask").rename(out / "mask-old")
    (out / "mask").write_text("mine too\n")
    before = _snapshot(out)
    with pytest.raises(ExportError, match="not written by anime_assets") as err:
        export_kohya(samples, out, name="frames", overwrite=True)
    assert f"{out / 'mask'} " in _one_line(err)
    assert _snapshot(out) == before and not rendered
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_interrupted_overwrite_rolls_back_or_never_looks_complete(tmp_path, samples, monkeypatch):  # noqa: F811
    out = tmp_path / "out"
    export_kohya(samples, out)
    (out / "output").mkdir()
    (out / "output" / "my_lora.safetensors").write_bytes(b"weights")
    _png(out / "img" / "1_Sylvie_Green" / "extra_user.png", 3)
    before = _snapshot(out)
    real = owned._move
    calls = {"n": 0}

    def failing(src, dst):
        calls["n"] += 1
        if calls["n"] == 30:  # the journal, 23 old files aside, 5 of the 14 new ones in: then a failure
            raise OSError("disk on fire")
        return real(src, dst)

    # an error mid-replacement: every step is undone, the old export is back byte for byte
    monkeypatch.setattr(owned, "_move", failing)
    with pytest.raises(OSError, match="disk on fire"):
        export_kohya(samples[:4], out, overwrite=True, trigger="t")
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    # a crash at the same point (nothing undone, the staging folder lost): never a complete-looking mix
    calls["n"] = 0
    monkeypatch.setattr(owned, "_rollback", lambda *a, **k: True)
    with pytest.raises(OSError, match="disk on fire"):
        export_kohya(samples[:4], out, overwrite=True, trigger="t")
    assert not (out / "dataset_config.toml").exists()  # no trainer config: a trainer cannot start on it
    mixed = out / "img" / "1_Sylvie_Green" / "ep01_s003_f000300_i1.txt"
    assert mixed.read_text().startswith("t, Sylvie Green, ")  # some new files are in: a mix, not complete
    assert not (out / "img" / "1_Sylvie_Green" / "ep01_s003_f000303_i1.txt").exists()
    man = _manifest(out)
    assert man["format"] == "anime_assets.kohya" and man["state"] == "incomplete"
    assert (out / "output" / "my_lora.safetensors").read_bytes() == b"weights"
    # without overwrite it is refused; with it, the run finishes it
    with pytest.raises(ExportError, match="not empty"):
        export_kohya(samples[:4], out)
    monkeypatch.setattr(owned, "_move", real)
    rep = export_kohya(samples[:4], out, overwrite=True, trigger="t")
    assert rep.groups == {"Sylvie_Green": (4, 1)} and _manifest(out)["state"] == "complete"
    after = _snapshot(out)
    assert after["output/my_lora.safetensors"] == b"weights"
    assert after["img/1_Sylvie_Green/extra_user.png"] == before["img/1_Sylvie_Green/extra_user.png"]
    assert set(after) == set(_listed(out)) | set(_manifest(out)["dirs"]) | {
        "export.json", "output", "output/my_lora.safetensors", "img/1_Sylvie_Green/extra_user.png"}
    assert (out / "dataset_config.toml").is_file()
