"""Kohya-style captions from what is known about a frame, and nothing else.

A caption is comma-separated tags, most important first (kohya's `keep_tokens` keeps the first
ones fixed while shuffling the rest): character names, how many characters, their expression,
their pose and framing, the tagger's tags, effects, scene, then shot facts. Every tag comes from
a measurement or a model and keeps its source and score; a fact nobody measured is left out, and
`sources` says what was missing and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Expression label -> the Danbooru-style tag trainers expect in a caption.
EXPRESSION_TAG = {
    "neutral": "expressionless", "happy": "smile", "laughing": "laughing", "sad": "sad", "crying": "crying",
    "angry": "angry", "surprised": "surprised", "embarrassed": "embarrassed", "scared": "scared",
}
# Tagger tags that say nothing a caption should carry (ratings are kept apart by the tagger).
DROP_TAGS = {"simple_background", "white_background", "transparent_background"}
# Share of the frame: below this an effect layer is taken for fringe, not an effect (on frames
# without effects, character parts the mask missed leave up to ~3% of the frame in it).
MIN_EFFECT_COVERAGE = 0.05
FRAMING_TAGS = {"full body", "cowboy shot", "upper body", "portrait", "close-up", "wide shot"}
MIN_PAN = 0.08  # camera travel over the shot, as a share of the frame width, that reads as a pan


@dataclass
class FrameFacts:
    """What the other assets know about one kept frame (None: not measured, with the reason in
    `missing`)."""

    width: int
    height: int
    characters: list[str] | None = None  # names from the character registry (issue 5)
    n_instances: int | None = None  # character instances from the layers
    expressions: list[str] | None = None  # one per face, best face first; None entries dropped
    pose_tags: list[list[str]] | None = None  # per instance
    tagger_tags: list[tuple[str, float]] | None = None  # general tags above threshold, best first
    tagger_characters: list[tuple[str, float]] | None = None  # the tagger's character tags
    scene_tags: list[tuple[str, float]] | None = None  # CLIP zero-shot
    shot_type: tuple[str, float] | None = None  # CLIP zero-shot framing, used when the pose gives none
    effect_blend: str | None = None
    effect_coverage: float | None = None
    camera_travel: float | None = None  # camera travel over the shot / frame width
    missing: dict[str, str] = field(default_factory=dict)  # fact -> why it is not known


def _tag_text(tag: str) -> str:
    """Danbooru spelling -> caption spelling: underscores become spaces, emoticons stay."""
    return tag if len(tag) <= 3 else tag.replace("_", " ")


def caption_tags(f: FrameFacts) -> list[tuple[str, float, str]]:
    """(tag, score, source) in caption order, each tag once (first source wins)."""
    out: list[tuple[str, float, str]] = []
    seen: set[str] = set()

    def add(tag: str, score: float, source: str) -> None:
        text = _tag_text(tag).strip()
        if text and text not in seen:
            seen.add(text)
            out.append((text, float(score), source))

    for name in f.characters or []:
        add(name, 1.0, "registry")
    for name, p in f.tagger_characters or []:
        add(name, p, "tagger")
    if f.n_instances is not None:
        if f.n_instances == 0:
            add("no humans", 1.0, "layers")
        elif f.n_instances == 1:
            add("solo", 1.0, "layers")
        else:
            add(f"{f.n_instances} characters", 1.0, "layers")
    for label in f.expressions or []:
        if label in EXPRESSION_TAG:
            add(EXPRESSION_TAG[label], 1.0, "faces")
    for tags in f.pose_tags or []:
        for t in tags:
            add(t, 1.0, "pose")
    pose_framed = any(t in FRAMING_TAGS for tags in f.pose_tags or [] for t in tags)
    if f.shot_type is not None and not pose_framed:  # measured keypoints beat a zero-shot guess
        add(f.shot_type[0], f.shot_type[1], "clip")
    for tag, p in f.tagger_tags or []:
        if tag not in DROP_TAGS:
            add(tag, p, "tagger")
    if f.effect_coverage is not None and f.effect_coverage >= MIN_EFFECT_COVERAGE:
        add("glowing" if f.effect_blend in ("add", "screen") else "visual effects", f.effect_coverage, "layers")
    for tag, p in f.scene_tags or []:
        add(tag, p, "clip")
    if f.camera_travel is not None and f.camera_travel >= MIN_PAN:
        add("camera pan", f.camera_travel, "shot")
    return out


def caption(f: FrameFacts) -> tuple[str, list[tuple[str, float, str]]]:
    tags = caption_tags(f)
    return ", ".join(t for t, _, _ in tags), tags


def sources_note(f: FrameFacts) -> str:
    """One line: which facts are unknown for this frame, and why."""
    if not f.missing:
        return "all sources present"
    return "; ".join(f"no {k}: {v}" for k, v in sorted(f.missing.items()))
