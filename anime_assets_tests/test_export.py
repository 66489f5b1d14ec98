"""Exports for trainers on real pixels: the kohya-ss / musubi-tuner folder and the torch Dataset.

The fixture is one rendered two-shot frame of the sample clip with its exact instance masks,
written the way the pipeline stores a kept frame: an RGB JPEG, the RGBA character layer (alpha =
union of the instances) and the uint8 instance-id PNG.
"""

from __future__ import annotations

import json
import pickle
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anime_assets.export import ExportError, MissingSourceError, balanced_repeats, export_kohya
from anime_assets.export.kohya import instance_crop_box, safe_name
from anime_assets.query import Sample
from anime_assets_tests.fixtures import clips

FRAME = 300  # the club two-shot: s3c0 left, s3c1 right


@pytest.fixture(scope="module")
def frame_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("frame")
    rgb, masks = clips.render_frame(clips.sample_spec(), FRAME, (640, 360))
    names = sorted(masks)
    assert names == ["s3c0", "s3c1"]
    stack = np.stack([masks[n] for n in names])
    ids = np.where(stack.max(0) >= 0.5, stack.argmax(0) + 1, 0).astype(np.uint8)  # instance 1, 2
    alpha = (np.clip(stack.sum(0), 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(rgb).save(d / "frame.jpg", quality=95)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(d / "characters.png")
    Image.fromarray(ids, "L").save(d / "instances.png")
    truth = {i + 1: masks[n] >= 0.5 for i, n in enumerate(names)}
    boxes = {}
    for k, m in truth.items():
        ys, xs = np.nonzero(m)
        boxes[k] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    decoded = np.asarray(Image.open(d / "frame.jpg").convert("RGB"))
    return dict(dir=d, truth=truth, boxes=boxes, decoded=decoded)


def _sample(f, sid, *, instance=None, name=None, caption="solo, smile, upper body, camera pan, solo", frame=FRAME):
    d = f["dir"]
    return Sample(id=sid, episode="ep01", shot="s003", frame_index=frame, image_path=d / "frame.jpg",
                  caption=caption, tags=("smile", "indoors"), character_path=d / "characters.png",
                  instance_mask_path=d / "instances.png", instance_id=instance,
                  box=f["boxes"][instance] if instance else None,
                  character_id=f"c{instance}" if instance else None, character_name=name)


@pytest.fixture(scope="module")
def samples(frame_files):
    f = frame_files
    green = [_sample(f, f"ep01/s003/f{FRAME + k:06d}/i1", instance=1, name="Sylvie Green", frame=FRAME + k)
             for k in range(4)]
    blue = [_sample(f, f"ep01/s003/f{FRAME:06d}/i2", instance=2, name="Sylvie Blue")]
    frames = [_sample(f, f"ep01/s003/f{FRAME + k:06d}", caption="2girls, indoors, indoors") for k in range(2)]
    return green + blue + frames


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def _tree(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_kohya_layout_repeats_captions_masks_config(tmp_path, frame_files, samples):
    out = tmp_path / "exports" / "sylvie"
    rep = export_kohya(samples, out, name="frames", trigger="sylv_anime", manifest_extra={"tables": {"frames": 7}})
    # repeats balance the groups: 4 x 1, 1 x 4, 2 x 2
    assert rep.groups == {"Sylvie_Green": (4, 1), "Sylvie_Blue": (1, 4), "frames": (2, 2)}
    assert rep.n_images == 7 and rep.n_masks == 7 and rep.views_per_epoch == 12
    for folder in ("1_Sylvie_Green", "4_Sylvie_Blue", "2_frames"):
        imgs = sorted((out / "img" / folder).glob("*.png"))
        assert imgs and all(p.with_suffix(".txt").is_file() for p in imgs)
        assert sorted(p.name for p in (out / "mask" / folder).glob("*.png")) == [p.name for p in imgs]
    assert (out / "README.txt").is_file() and rep.config_path == out / "dataset_config.toml"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left

    man = json.loads((out / "export.json").read_text())
    assert man["extra"] == {"tables": {"frames": 7}} and man["n_images"] == 7
    by_id = {r["id"]: r for r in man["samples"]}

    # captions: trigger, character name, then the tags deduplicated
    g = by_id["ep01/s003/f000300/i1"]
    cap = (out / g["file"]).with_suffix(".txt").read_text().strip()
    assert cap == "sylv_anime, Sylvie Green, solo, smile, upper body, camera pan, indoors"
    fcap = (out / by_id["ep01/s003/f000300"]["file"]).with_suffix(".txt").read_text().strip()
    assert fcap == "sylv_anime, 2girls, indoors, smile"

    # instance crops: the image is the frame's pixels (PNG, lossless), the mask this instance only
    dec = frame_files["decoded"]
    for sid, inst in (("ep01/s003/f000300/i1", 1), ("ep01/s003/f000300/i2", 2)):
        r = by_id[sid]
        x0, y0, x1, y1 = r["crop_box"]
        bx0, by0, bx1, by1 = frame_files["boxes"][inst]
        assert x0 <= bx0 and y0 <= by0 and x1 >= bx1 and y1 >= by1  # the whole instance, with context
        assert max(x1 - x0, y1 - y0) / min(x1 - x0, y1 - y0) <= 2.0
        img = np.asarray(Image.open(out / r["file"]))
        assert img.shape == (y1 - y0, x1 - x0, 3) and np.array_equal(img, dec[y0:y1, x0:x1])
        m = np.asarray(Image.open(out / r["mask"]))
        assert m.dtype == np.uint8 and m.shape == img.shape[:2]
        want = frame_files["truth"][inst][y0:y1, x0:x1]
        other = frame_files["truth"][3 - inst][y0:y1, x0:x1]
        assert _iou(m > 127, want) > 0.995
        assert (m[other] == 0).all()
    # a frame sample: the whole frame, the mask is every character
    r = by_id["ep01/s003/f000300"]
    assert r["crop_box"] == [0, 0, 640, 360]
    m = np.asarray(Image.open(out / r["mask"])) > 127
    assert _iou(m, frame_files["truth"][1] | frame_files["truth"][2]) > 0.995

    # the sd-scripts config: absolute paths to the folders, masks as conditioning_data_dir
    cfg = tomllib.loads(rep.config_path.read_text())
    assert cfg["general"]["caption_extension"] == ".txt" and cfg["general"]["shuffle_caption"] is True
    (ds,) = cfg["datasets"]
    assert ds["resolution"] == 1024 and ds["enable_bucket"] is True
    subs = {Path(s["image_dir"]).name: s for s in ds["subsets"]}
    assert set(subs) == {"1_Sylvie_Green", "4_Sylvie_Blue", "2_frames"}
    for folder, s in subs.items():
        assert Path(s["image_dir"]).is_absolute() and Path(s["image_dir"]).is_dir()
        assert Path(s["conditioning_data_dir"]) == out / "mask" / folder and Path(s["conditioning_data_dir"]).is_dir()
        assert s["num_repeats"] == int(folder.split("_")[0])
        assert "class_tokens" not in s
    assert subs["1_Sylvie_Green"]["keep_tokens"] == 2 and subs["2_frames"]["keep_tokens"] == 1


def test_musubi_and_alpha_layouts(tmp_path, frame_files, samples):
    rep = export_kohya(samples, tmp_path / "mu", layout="musubi", repeats=3, resolution=(960, 544), crop="frame")
    cfg = tomllib.loads(rep.config_path.read_text())
    assert cfg["general"]["resolution"] == [960, 544] and cfg["general"]["caption_extension"] == ".txt"
    assert cfg["general"]["enable_bucket"] is True and cfg["general"]["batch_size"] == 1
    caches = [d["cache_directory"] for d in cfg["datasets"]]
    assert len(set(caches)) == len(caches) == 3
    for d in cfg["datasets"]:
        assert d["num_repeats"] == 3 and Path(d["image_directory"]).is_dir() and Path(d["cache_directory"]).is_dir()
        for p in Path(d["image_directory"]).glob("*.png"):  # crop="frame": whole frames
            assert Image.open(p).size == (640, 360)
    assert set(rep.groups) == {"Sylvie_Green", "Sylvie_Blue", "mu"}

    rep = export_kohya(samples[4:5], tmp_path / "alpha", mask="alpha", absolute_paths=False)
    cfg = tomllib.loads(rep.config_path.read_text())
    (sub,) = cfg["datasets"][0]["subsets"]
    assert sub["alpha_mask"] is True and "conditioning_data_dir" not in sub
    assert sub["image_dir"] == "img/1_Sylvie_Blue" and (rep.out_dir / sub["image_dir"]).is_dir()
    assert not (rep.out_dir / "mask").exists()
    with pytest.raises(ExportError, match="musubi"):
        export_kohya(samples, tmp_path / "mu2", layout="musubi", mask="alpha")
    (png,) = (rep.out_dir / sub["image_dir"]).glob("*.png")
    a = np.asarray(Image.open(png))
    man = json.loads((rep.out_dir / "export.json").read_text())
    x0, y0, x1, y1 = man["samples"][0]["crop_box"]
    assert a.shape[2] == 4 and _iou(a[..., 3] > 127, frame_files["truth"][2][y0:y1, x0:x1]) > 0.995


def test_atomic_overwrite_rules(tmp_path, frame_files, samples):
    out = tmp_path / "ex"
    export_kohya(samples[:2], out)
    stray = out / "img" / "stray.txt"
    stray.write_text("old")
    with pytest.raises(ExportError, match="not empty"):
        export_kohya(samples, out)
    assert stray.exists()  # untouched
    # a failing export (a missing source) leaves the old export whole and no temp folder
    gone = Sample(id="ep01/s003/f000999", episode="ep01", shot="s003", frame_index=999,
                  image_path=frame_files["dir"] / "nope.jpg")
    with pytest.raises(MissingSourceError) as err:
        export_kohya([*samples, gone], out, overwrite=True)
    msg = str(err.value)
    assert "\n" not in msg and str(frame_files["dir"] / "nope.jpg") in msg and "f000999" in msg
    assert stray.exists()
    rep = export_kohya(samples, out, overwrite=True)  # its own files replaced; the stray file is the user's
    assert stray.read_text() == "old" and rep.n_images == len(samples)  # not ours: kept (issue 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex"]  # no temp / old folders left
    # an empty existing folder is fine; a foreign non-empty folder is never replaced
    (tmp_path / "empty").mkdir()
    export_kohya(samples[:1], tmp_path / "empty")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="not an anime_assets export"):
        export_kohya(samples, foreign, overwrite=True)
    assert (foreign / "keep.txt").read_text() == "x"


def test_names_are_sanitised(tmp_path, frame_files):
    f = frame_files
    evil = [
        _sample(f, "../../x", instance=1, name="../../evil/.."),
        _sample(f, "..\\..\\y", instance=2, name="Ev il!"),
        _sample(f, "a/b", instance=2, name="Ev il?"),  # another label that sanitises the same
        _sample(f, "a_b", instance=2, name="Ev il?"),  # a file name that sanitises the same
    ]
    out = tmp_path / "inner" / "out"
    rep = export_kohya(evil, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inner"]
    assert sorted(p.name for p in (tmp_path / "inner").iterdir()) == ["out"]
    assert set(rep.groups) == {"evil", "Ev_il", "Ev_il-2"}
    for rel in _tree(out):
        assert all(part and part not in (".", "..") for part in rel.split("/"))
        assert all(c.isalnum() or c in "._-/" for c in rel), rel
        assert (out / rel).resolve().is_relative_to(out.resolve())
    files = sorted(p.name for p in (out / "img" / "1_Ev_il-2").glob("*.png"))
    assert files == ["a_b-2.png", "a_b.png"]
    assert safe_name("..") == "x" and safe_name("../../x") == "x" and safe_name(".hidden") == "hidden"


def test_repeats_and_crop_helpers():
    assert balanced_repeats({"a": 10, "b": 3, "c": 1}) == {"a": 1, "b": 3, "c": 10}
    assert balanced_repeats({"a": 10, "b": 4}, target_steps_per_epoch=20) == {"a": 2, "b": 5}
    assert balanced_repeats({"a": 50, "b": 4}, target_steps_per_epoch=10) == {"a": 1, "b": 3}
    assert balanced_repeats({"a": 5}, repeats=2) == {"a": 2}
    with pytest.raises(ExportError):
        balanced_repeats({"a": 5}, repeats=0)
    # a small box: a square crop of at least 256 px, inside the frame
    assert instance_crop_box((300, 100, 340, 140), 640, 360) == (192, 0, 448, 256)
    # a box at the edge: shifted inside, never padded
    x0, y0, x1, y1 = instance_crop_box((0, 0, 200, 300), 640, 360)
    assert x0 == 0 and y0 == 0 and y1 == 360 and x1 - x0 >= 200


def test_torch_dataset_spawn_workers(frame_files, samples):
    import torch
    from torch.utils.data import DataLoader

    from anime_assets.export import AnimeAssetsDataset, collate

    ds = AnimeAssetsDataset(samples, size=(256, 320), trigger="sylv_anime")
    assert pickle.loads(pickle.dumps(ds)).samples == ds.samples
    item = ds[4]  # instance 2 (Sylvie Blue): a crop taller than wide, letterboxed
    assert item["pixel_values"].shape == (3, 256, 320) and item["pixel_values"].dtype == torch.float32
    assert item["mask"].shape == (1, 256, 320)
    assert 0.0 <= float(item["pixel_values"].min()) and float(item["pixel_values"].max()) <= 1.0
    assert item["caption"].startswith("sylv_anime, Sylvie Blue, ") and item["character"] == "Sylvie Blue"
    assert float(item["mask"][..., :, :10].max()) == 0.0  # the padding is never learned
    assert float(item["mask"].max()) == 1.0
    norm = AnimeAssetsDataset(samples[:1], size=64, normalize=True, crop="frame")[0]
    assert float(norm["pixel_values"].min()) < -0.5 and norm["pixel_values"].shape == (3, 64, 64)

    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="spawn", collate_fn=collate)
    batches = list(loader)
    assert [b["pixel_values"].shape[0] for b in batches] == [4, 3]
    b = batches[1]
    assert b["pixel_values"].shape == (3, 3, 256, 320) and b["mask"].shape == (3, 1, 256, 320)
    assert b["id"] == [s.id for s in samples[4:]] and b["character"] == ["Sylvie Blue", None, None]
    assert torch.allclose(batches[1]["pixel_values"][0], item["pixel_values"])
