"""Caption assembly: order, each tag once, and nothing that was not measured."""

from __future__ import annotations

from anime_assets.vision.captions import FrameFacts, caption, sources_note


def test_caption_order_and_sources():
    facts = FrameFacts(
        width=1280, height=720, characters=["Sylvie"], n_instances=1, expressions=["happy"],
        pose_tags=[["upper body", "arms up"]], tagger_tags=[("1girl", 0.98), ("smile", 0.9), ("long_hair", 0.8),
                                                             ("simple_background", 0.7), (":d", 0.5)],
        scene_tags=[("outdoors", 0.6)], effect_blend="add", effect_coverage=0.12, camera_travel=0.2,
    )
    text, tags = caption(facts)
    assert text == ("Sylvie, solo, smile, upper body, arms up, 1girl, long hair, :d, glowing, outdoors, camera pan")
    sources = {t: src for t, _, src in tags}
    assert sources["Sylvie"] == "registry" and sources["smile"] == "faces"  # the tagger's smile is not repeated
    assert sources["glowing"] == "layers" and sources["outdoors"] == "clip" and sources["camera pan"] == "shot"
    assert sources_note(facts) == "all sources present"
    facts.shot_type = ("full body", 0.7)  # the keypoints already framed the shot: CLIP's guess is left out
    assert "full body" not in caption(facts)[0]
    facts.pose_tags = [["arms up"]]
    assert caption(facts)[0].split(", ")[2:5] == ["smile", "arms up", "full body"]


def test_unknown_facts_are_left_out_and_named():
    facts = FrameFacts(width=640, height=360, n_instances=2, expressions=[], effect_blend="normal",
                       effect_coverage=0.02, camera_travel=0.01,
                       missing={"tagger tags": "no anime tagger here", "character names": "no registry yet"})
    text, tags = caption(facts)
    assert text == "2 characters"  # fringe effect and a still camera are not tagged
    assert sources_note(facts) == "no character names: no registry yet; no tagger tags: no anime tagger here"
    assert caption(FrameFacts(width=640, height=360))[0] == ""  # nothing known: nothing said
    assert caption(FrameFacts(width=640, height=360, n_instances=0))[0] == "no humans"
