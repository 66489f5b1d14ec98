"""Facial expression labels from tagger tags or CLIP similarities, and the face crop they are made on.

Pure numpy: no Dagster, no model loading (`anime_assets.models.tagger` and
`anime_assets.models.zeroshot` produce the inputs).

Labels: `EXPRESSIONS` is the fixed set. From a Danbooru tagger (WD v3) the score of a label is
the largest weighted probability of the tags that evidence it (`EXPRESSION_TAGS`), plus a few
rules that need two tags at once:

* laughing: "laughing", or an open-mouth smile (":d", "grin", smile + open_mouth, smile + teeth)
  with closed eyes ("closed_eyes", "^_^"): min of the two;
* crying: "crying", "streaming_tears", "crying_with_eyes_open", and "tears" unless the face
  smiles ("happy_tears" and tears + smile are happy);
* neutral is never a default: it needs "expressionless", or "closed_mouth" on a face with no
  other evidence (min(closed_mouth, 1 - strongest other label));
* the more specific label wins over its generic one once it reaches `min_score`: laughing over
  happy, crying over sad; a tie with neutral goes to the other label.

Nothing at or above `min_score` (0.35, the usual WD general threshold) gives no label and a
reason, never a guessed "neutral".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

EXPRESSIONS = ("neutral", "happy", "laughing", "sad", "crying", "angry", "surprised", "embarrassed", "scared")

# label -> {Danbooru tag (WD v3 spelling: underscores; emoticons as written): weight}.
# A tag's weight caps how much it alone says (a blush is everywhere in anime art; alone it is
# weak evidence of embarrassment). Compound rules (module docstring) add to these.
EXPRESSION_TAGS: dict[str, dict[str, float]] = {
    "neutral": {"expressionless": 1.0, "closed_mouth": 1.0},  # closed_mouth only without other evidence
    "happy": {"smile": 1.0, "happy": 1.0, ":d": 1.0, "grin": 1.0, "^_^": 1.0, "happy_tears": 1.0, ":)": 1.0, "smirk": 0.6},
    "laughing": {"laughing": 1.0},  # + open-mouth smile with closed eyes
    "sad": {"sad": 1.0, "frown": 0.8, "tearing_up": 0.8, "depressed": 1.0},
    "crying": {"crying": 1.0, "streaming_tears": 1.0, "crying_with_eyes_open": 1.0, "tears": 1.0},  # tears: not with a smile
    "angry": {"angry": 1.0, "annoyed": 0.9, "clenched_teeth": 0.8, "v-shaped_eyebrows": 0.8, "glaring": 0.8, "anger_vein": 0.9},
    "surprised": {"surprised": 1.0, ":o": 0.9, "wide-eyed": 0.8, "o_o": 0.9, "constricted_pupils": 0.6},
    "embarrassed": {"embarrassed": 1.0, "full-face_blush": 0.9, "nose_blush": 0.7, "wavy_mouth": 0.6, "blush": 0.5},
    "scared": {"scared": 1.0, "trembling": 0.8, "shaded_face": 0.7, "turn_pale": 0.9},
}
# Tags of the compound rules (not evidence on their own).
OPEN_SMILE_TAGS = (":d", "grin")
CLOSED_EYES_TAGS = ("closed_eyes", "^_^")
DEFAULT_MIN_SCORE = 0.35


def _as_probs(tag_probs) -> dict[str, float]:
    """dict tag -> prob from a dict, (tag, prob) pairs, or `Tagger.tags()` output (general +
    character lists, rating dict)."""
    if isinstance(tag_probs, Mapping) and isinstance(tag_probs.get("general"), (list, tuple)):
        return {str(t): float(p) for t, p in tag_probs["general"]}
    if isinstance(tag_probs, Mapping):
        return {str(t): float(p) for t, p in tag_probs.items() if isinstance(p, (int, float, np.floating))}
    if isinstance(tag_probs, Iterable):
        return {str(t): float(p) for t, p in tag_probs}
    raise TypeError(f"expected tag -> probability, got {type(tag_probs).__name__}")


def expression_from_tags(tag_probs, min_score: float = DEFAULT_MIN_SCORE) -> tuple[str | None, dict[str, float], str | None]:
    """(label or None, score per label in EXPRESSIONS order, reason when None).

    `tag_probs`: tag -> probability (WD spelling), (tag, prob) pairs, or a `Tagger.tags()` dict
    (its general tags; a tag below the tagger's threshold counts as 0)."""
    p = _as_probs(tag_probs)

    def get(tag: str) -> float:
        return min(1.0, max(0.0, p.get(tag, 0.0)))

    def strongest(tags) -> float:
        return max((get(t) for t in tags), default=0.0)

    scores = {label: 0.0 for label in EXPRESSIONS}
    for label, tags in EXPRESSION_TAGS.items():
        if label in ("neutral", "crying"):
            continue
        scores[label] = max((w * get(t) for t, w in tags.items()), default=0.0)

    smile = strongest(("smile", "happy", ":d", "grin", "^_^", "happy_tears"))
    open_smile = max(strongest(OPEN_SMILE_TAGS), min(get("smile"), max(get("open_mouth"), get("teeth"))))
    scores["laughing"] = max(scores["laughing"], min(open_smile, strongest(CLOSED_EYES_TAGS)))
    crying = {t: w for t, w in EXPRESSION_TAGS["crying"].items() if t != "tears"}
    scores["crying"] = max(max(w * get(t) for t, w in crying.items()), min(get("tears"), 1.0 - smile))

    other = max(scores[label] for label in EXPRESSIONS if label != "neutral")
    scores["neutral"] = max(get("expressionless"), min(get("closed_mouth"), 1.0 - other))
    scores = {label: round(float(s), 4) for label, s in scores.items()}

    best = max(EXPRESSIONS, key=lambda label: (scores[label], label != "neutral"))
    if scores[best] < min_score:
        return None, scores, f"no expression tag above {min_score:g}"
    if best == "happy" and scores["laughing"] >= min_score:
        best = "laughing"
    elif best == "sad" and scores["crying"] >= min_score:
        best = "crying"
    return best, scores, None


def expression_from_similarity(sims: np.ndarray, logit_scale: float = 100.0) -> tuple[str, dict[str, float]]:
    """CLIP zero-shot: cosine similarity of one face to each label's text embedding (in
    EXPRESSIONS order) -> (most likely label, softmax(logit_scale * sims) per label)."""
    sims = np.asarray(sims, np.float64).reshape(-1)
    if sims.shape != (len(EXPRESSIONS),):
        raise ValueError(f"expected {len(EXPRESSIONS)} similarities (one per label in EXPRESSIONS), got {sims.shape}")
    z = logit_scale * sims
    z = np.exp(z - z.max())
    probs = z / z.sum()
    scores = {label: float(q) for label, q in zip(EXPRESSIONS, probs)}
    return EXPRESSIONS[int(np.argmax(probs))], scores


def crop_square(bbox, scale: float = 1.6) -> tuple[int, int, int]:
    """(left, top, side) of the square `face_crop` cuts for `bbox` = (x0, y0, x1, y1), in frame
    pixels (may lie partly outside the frame)."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty face box {bbox}")
    side = max(1, int(round(scale * max(x1 - x0, y1 - y0))))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side


def face_crop(rgb: np.ndarray, bbox, scale: float = 1.6, pad: str = "white") -> np.ndarray:
    """Square RGB uint8 crop of side scale * the box's long side, centred on the face box, so a
    tagger or CLIP sees the hair, eyebrows and mouth around the face. Where the square leaves the
    frame it is filled with white (`pad="white"`, what the WD tagger pads with) or the frame's
    edge pixels (`pad="edge"`). RGBA input is composited over white first."""
    image = np.asarray(rgb)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) * np.float32(1.0 / 255.0)
        image = (image[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    if pad not in ("white", "edge"):
        raise ValueError(f"pad must be 'white' or 'edge', not {pad!r}")
    h, w = image.shape[:2]
    left, top, side = crop_square(bbox, scale)
    sx0, sy0 = max(0, left), max(0, top)
    sx1, sy1 = min(w, left + side), min(h, top + side)
    if sx1 <= sx0 or sy1 <= sy0:
        raise ValueError(f"face box {bbox} lies outside the {w}x{h} frame")
    inside = image[sy0:sy1, sx0:sx1, :3]
    if (sx0, sy0, sx1, sy1) == (left, top, left + side, top + side):
        return np.ascontiguousarray(inside)
    before_y, after_y = sy0 - top, top + side - sy1
    before_x, after_x = sx0 - left, left + side - sx1
    widths = ((before_y, after_y), (before_x, after_x), (0, 0))
    if pad == "edge":
        return np.pad(inside, widths, mode="edge")
    return np.pad(inside, widths, mode="constant", constant_values=255)
