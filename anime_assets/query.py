"""The trainer-facing query API over the LanceDB tables (issue 5).

`open_dataset(root)` pins every table at its current version (or the versions given), so a
training run reads exactly the same rows however the pipeline moves on; `Dataset.query(...)`
filters by character, outfit, expression, pose, effects, quality, episode, shot and openings /
endings, searches by text through CLIP when the frames hold CLIP vectors, balances across
episodes or shots, and returns `Sample`s: paths of the kept frame and its layers, plus captions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One training sample: a kept frame, or one character instance in it (`instance_id` set).
    Plain data (paths and strings), so it pickles into spawned DataLoader workers."""

    id: str  # the frame id, or "<frame id>/i<instance>" for a character instance
    episode: str
    shot: str
    frame_index: int
    image_path: Path  # the kept frame, RGB
    caption: str = ""
    tags: tuple[str, ...] = ()
    character_path: Path | None = None  # the character layer of the frame: RGBA, straight alpha
    instance_mask_path: Path | None = None  # uint8 PNG: instance id per pixel (0 = none)
    instance_id: int | None = None  # this sample's instance in the mask (None: the whole frame)
    box: tuple[int, int, int, int] | None = None  # the instance's box (x0, y0, x1, y1)
    character_id: str | None = None
    character_name: str | None = None
    outfit: str | None = None
    expression: str | None = None
    pose_tags: tuple[str, ...] = ()
    has_effects: bool = False
    quality: float | None = None
    repeat_kind: str | None = None  # "opening" | "ending" | "repeat" when the shot repeats across episodes
    extra: dict = field(default_factory=dict, compare=False, hash=False)
