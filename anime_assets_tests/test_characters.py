"""The character registry's logic: matching across episodes, names, merges and splits.

Descriptors come from real pixels: the fixture sprite's head and outfit colours, and a second
character made by recolouring her hair and eyes (hue +40 degrees), which is what tells two
anime characters apart when their drawings are alike."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anime_assets.stages import characters as chs
from anime_assets.storage import schema as fs
from anime_assets.storage.media import MediaStore
from anime_assets.vision.identity import instance_descriptors
from anime_assets_tests.fixtures import clips


def _recolour(rgb: np.ndarray, degrees: int) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + degrees // 2) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


@pytest.fixture(scope="module")
def people():
    """(look, face) descriptors of sprites: Sylvie in blue and green, and 'Other' (recoloured)."""
    art = clips.load_art()
    out = {}
    for outfit in ("blue", "green"):
        for expr in ("normal", "smile"):
            rgba = art.sprites[(outfit, expr)]
            rgb, mask = np.ascontiguousarray(rgba[..., :3]), rgba[..., 3] >= 128
            face = clips.FACE_BOX
            out[("sylvie", outfit, expr)] = instance_descriptors(rgb, mask, face)
            out[("other", outfit, expr)] = instance_descriptors(_recolour(rgb, 40), mask, face)
    return out


def _obs(episode: str, items: list[tuple[str, tuple]]) -> list[dict]:
    rows = []
    for n, (who, (look, face)) in enumerate(items):
        frame = fs.frame_id(episode, "s0000", n)
        rows.append({fs.ID: fs.pose_id(frame, 1), fs.EPISODE: episode, fs.SHOT: "s0000", fs.FRAME_INDEX: n,
                     fs.FRAME_ID: frame, fs.INSTANCE_ID: 1, fs.BOX: [0, 0, 10, 10], "area": 0.1, fs.LOOK: look,
                     fs.FACE_VECTOR: face, fs.DESCRIPTOR: chs.DESCRIPTOR, fs.PIPELINE_VERSION: "test",
                     "_character_uri": None, "_who": who})
    return rows


def _run(reg, store, episode, items):
    obs = _obs(episode, items)
    out = chs.assign_episode(reg, store, episode, [{k: v for k, v in o.items() if k != "_who"} for o in obs])
    got = {r[fs.ID]: r[fs.CHARACTER_ID] for r in reg.read_instances(episode)}
    return out, {o["_who"]: chs.resolve(got[o[fs.ID]], {c[fs.CHARACTER_ID]: c for c in reg.read_characters()})
                 for o in obs}


def test_same_character_across_outfits_and_episodes_other_character_apart(people, tmp_path):
    reg, store = chs.registry(str(tmp_path / "db")), MediaStore(tmp_path / "media")
    ep1 = [("sylvie-blue", people[("sylvie", "blue", "normal")]), ("sylvie-green", people[("sylvie", "green", "smile")]),
           ("other-blue", people[("other", "blue", "normal")])]
    out, who = _run(reg, store, "ep01", ep1)
    assert who["sylvie-blue"] == who["sylvie-green"] != who["other-blue"]
    assert len(out["new_characters"]) == 2
    sylvie = who["sylvie-blue"]
    assert chs.name_character(reg, sylvie, "Sylvie") == sylvie
    ep2 = [("sylvie-green", people[("sylvie", "green", "normal")]), ("other-green", people[("other", "green", "smile")])]
    out, who2 = _run(reg, store, "ep02", ep2)
    assert who2["sylvie-green"] == sylvie and who2["other-green"] == who["other-blue"] and out["new_characters"] == []
    before = chs.listing(reg)
    _run(reg, store, "ep01", ep1)  # re-clustering changes nothing, names stay
    assert chs.listing(reg) == before and before[0]["name"] == "Sylvie"
    assert {r["episodes"] == ["ep01", "ep02"] for r in before} == {True}


def test_merge_split_and_name_rules(people, tmp_path):
    reg, store = chs.registry(str(tmp_path / "db")), MediaStore(tmp_path / "media")
    _, who = _run(reg, store, "ep01", [("s", people[("sylvie", "blue", "normal")]), ("o", people[("other", "green", "normal")])])
    chs.name_character(reg, who["s"], "Sylvie")
    with pytest.raises(chs.RegistryEditError, match="already named"):
        chs.name_character(reg, who["o"], "sylvie")
    assert chs.merge_characters(reg, store, who["o"], "Sylvie") == who["s"]
    live = chs.listing(reg)
    assert len(live) == 1 and live[0]["name"] == "Sylvie" and len(live[0]["outfits"]) == 2
    # A later episode's 'other' instances follow the merge (its outfit now belongs to Sylvie).
    _, who2 = _run(reg, store, "ep02", [("o", people[("other", "green", "smile")])])
    assert who2["o"] == who["s"]
    # Split the outfit back out: a new id, and the next episode follows the split.
    moved = next(r[fs.OUTFIT_ID] for r in reg.read_instances("ep01") if r[fs.FRAME_INDEX] == 1)  # 'other's outfit
    new = chs.split_outfit(reg, store, "Sylvie", moved)
    assert new not in (who["s"], who["o"]) and len(chs.listing(reg)) == 2
    with pytest.raises(chs.RegistryEditError, match="one outfit only"):
        chs.split_outfit(reg, store, new, moved)
    with pytest.raises(chs.RegistryEditError, match="no character"):
        chs.name_character(reg, "c9999", "X")
