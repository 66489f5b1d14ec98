"""animeface (model compiled into the wheel) finds the fixture characters' faces for real."""

from __future__ import annotations

import pytest

from anime_assets.vision.faces import detect_faces
from anime_assets_tests.fixtures import clips

# sample-episode frames (640x360 re-renders): pan, medium, full body, two-shot, close-up, bob, two-shot
FRAMES = (10, 120, 200, 300, 356, 600, 650)


@pytest.fixture(scope="module")
def sample():
    _, gt = clips.standard_clips()["sample"]
    return clips.sample_spec(), gt


@pytest.mark.parametrize("i", FRAMES)
def test_one_face_per_character_in_the_top_of_its_box(sample, i):
    spec, gt = sample
    rgb, _ = clips.render_frame(spec, i)
    faces = detect_faces(rgb)
    chars = gt.frames[i]["characters"]
    assert len(faces) == len(chars)
    for c in chars:
        x0, y0, x1, y1 = c["bbox"]
        inside = [f for f in faces if x0 <= (f["bbox"][0] + f["bbox"][2]) / 2 <= x1
                  and y0 <= (f["bbox"][1] + f["bbox"][3]) / 2 <= y0 + 0.6 * (y1 - y0)]
        assert len(inside) == 1, (i, c["bbox"], [f["bbox"] for f in faces])
        face = inside[0]
        assert face["likelihood"] >= 0.9
        fx0, fy0, fx1, fy1 = face["bbox"]
        lx0, ly0, lx1, ly1 = face["left_eye"]["bbox"]
        assert fx0 <= lx0 < lx1 <= fx1 and fy0 <= ly0 < ly1 <= fy1  # parts lie inside the face


def test_scaled_frames_give_the_same_boxes_in_frame_pixels(sample):
    import cv2

    spec, _ = sample
    rgb, _ = clips.render_frame(spec, 120)
    big = cv2.resize(rgb, (1920, 1080), interpolation=cv2.INTER_CUBIC)
    small_box = detect_faces(rgb)[0]["bbox"]
    big_box = detect_faces(big)[0]["bbox"]
    assert all(abs(b / 3 - s) <= 6 for b, s in zip(big_box, small_box))
