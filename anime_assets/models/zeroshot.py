"""CLIP zero-shot labels: facial expressions, scene tags and shot types from text prompts.

`ZeroShot(embedder)` wraps a `ClipEmbedder` (anime_assets.models.clip) that has a text tower;
the weight-free colour-layout fallback of `vision.embed` cannot embed text and is refused with
`ModelUnavailable`. Each label is a small prompt ensemble: the L2-normalised mean of its prompts'
text embeddings (computed once per vocabulary and cached). An image's probabilities are
softmax(logit_scale * cosine) over the labels of one vocabulary; logit_scale = 100 is the
value trained CLIP models end at.

Scene and shot tags are kohya/Danbooru-style caption words, spelled with spaces ("upper body",
"school hallway"); the WD tagger's tags keep Danbooru's underscores.

Images are RGB uint8 (any size; the embedder preprocesses), or for `scene_tags` / `shot_types`
also an (n, d) float array of this embedder's image vectors (e.g. the frame vectors already
stored by the embedding stage), which skips the image tower.

No Dagster here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from anime_assets.models.clip import ModelUnavailable, l2_normalise
from anime_assets.vision.expression import EXPRESSIONS, expression_from_similarity

LOGIT_SCALE = 100.0

EXPRESSION_PROMPTS: dict[str, tuple[str, ...]] = {
    "neutral": (
        "an anime character with a neutral expression",
        "an anime girl with an expressionless face",
        "a calm anime face with a closed mouth",
        "an anime character looking blank",
    ),
    "happy": (
        "an anime character with a happy face",
        "a smiling anime girl",
        "an anime character smiling gently",
        "a cheerful anime face",
    ),
    "laughing": (
        "an anime character laughing with closed eyes",
        "a laughing anime girl with her mouth wide open",
        "an anime face laughing happily",
        "an anime character giggling",
    ),
    "sad": (
        "an anime character with a sad face",
        "a sad anime girl frowning",
        "a gloomy anime face looking down",
        "an anime character looking unhappy",
    ),
    "crying": (
        "an anime character crying",
        "a crying anime girl with tears streaming down her face",
        "an anime face with tears",
        "an anime character sobbing",
    ),
    "angry": (
        "an angry anime character",
        "an anime girl glaring angrily",
        "an anime face with furrowed brows, annoyed",
        "a furious anime character clenching teeth",
    ),
    "surprised": (
        "a surprised anime character",
        "an anime girl with wide eyes and an open mouth in surprise",
        "a shocked anime face",
        "an astonished anime character",
    ),
    "embarrassed": (
        "an embarrassed anime character blushing",
        "a flustered anime girl with red cheeks",
        "a shy anime face with a blush",
        "an anime character blushing in embarrassment",
    ),
    "scared": (
        "a scared anime character",
        "a frightened anime girl trembling",
        "an anime face full of fear",
        "a terrified anime character with a pale face",
    ),
}

SCENE_PROMPTS: dict[str, tuple[str, ...]] = {
    "indoors": ("an anime scene indoors", "the inside of a room in an anime"),
    "outdoors": ("an anime scene outdoors", "an outdoor place in an anime"),
    "classroom": ("an anime classroom with desks and a blackboard", "a school classroom in an anime"),
    "lecture hall": ("an anime university lecture hall with rows of seats", "a lecture hall in an anime"),
    "school hallway": ("an anime school hallway with windows", "a corridor in an anime school"),
    "club room": ("an anime school club room", "a small club room with a table and shelves in an anime"),
    "bedroom": ("an anime bedroom with a bed", "a bedroom in an anime"),
    "living room": ("an anime living room with a sofa", "a living room in an anime"),
    "office": ("an anime office with desks and computers", "an office in an anime"),
    "library": ("an anime library with bookshelves", "a library in an anime"),
    "street": ("an anime street with houses", "a street in an anime town"),
    "city": ("an anime city with tall buildings", "a cityscape in an anime"),
    "campus": ("an anime university campus", "the grounds of a school in an anime"),
    "park": ("an anime park with trees and benches", "a park in an anime"),
    "forest": ("an anime forest with many trees", "a forest in an anime"),
    "field": ("an anime meadow with grass and flowers", "a grassy field in an anime"),
    "beach": ("an anime beach with sand and sea", "a beach in an anime"),
    "sky": ("an anime sky with clouds", "a blue sky in an anime"),
    "sunset": ("an anime scene at sunset", "an orange sunset sky in an anime"),
    "night": ("an anime scene at night", "a dark night in an anime"),
}

SHOT_PROMPTS: dict[str, tuple[str, ...]] = {
    "close-up": ("a close-up of an anime character's face", "an anime close-up shot of a face"),
    "upper body": ("an anime character shown from the chest up", "an upper body shot of an anime character"),
    "cowboy shot": ("an anime character shown from the thighs up", "a cowboy shot of an anime character"),
    "full body": ("an anime character shown from head to toe", "a full body shot of an anime character"),
    "wide shot": ("a wide shot of an anime landscape with small or no characters", "anime scenery"),
}

SCENE_TAGS = tuple(SCENE_PROMPTS)
SHOT_TYPES = tuple(SHOT_PROMPTS)
if tuple(EXPRESSION_PROMPTS) != EXPRESSIONS:  # expression_from_similarity reads rows in this order
    raise RuntimeError("EXPRESSION_PROMPTS must list the labels of EXPRESSIONS, in order")


def _has_text_tower(embedder) -> str | None:
    """Why `embedder` cannot embed text (None: it can)."""
    model_id = getattr(embedder, "model_id", type(embedder).__name__)
    embed_texts = getattr(embedder, "embed_texts", None)
    if not callable(embed_texts) or not callable(getattr(embedder, "embed_images", None)):
        return f"{model_id} has no embed_texts / embed_images"
    try:
        probe = np.asarray(embed_texts(["an anime screenshot"]), np.float32)
    except ModelUnavailable as exc:
        return f"{model_id}: {exc.reason}"
    except NotImplementedError as exc:
        return f"{model_id} cannot embed text ({exc or 'not implemented'})"
    if probe.ndim != 2 or probe.shape[0] != 1 or not np.isfinite(probe).all():
        return f"{model_id} gave a text embedding of shape {probe.shape}"
    return None


class ZeroShot:
    """Zero-shot labels from a CLIP embedder with a text tower (see the module docstring)."""

    def __init__(self, embedder, logit_scale: float = LOGIT_SCALE):
        why = _has_text_tower(embedder)
        if why is not None:
            raise ModelUnavailable(f"zero-shot labels need a CLIP model with a text tower; {why}")
        self.embedder = embedder
        self.model_id = f"zero-shot:{embedder.model_id}"
        self.logit_scale = float(logit_scale)
        self._label_vectors: dict[str, np.ndarray] = {}

    # ---- text side -------------------------------------------------------------------
    def label_vectors(self, vocabulary: str, prompts: Mapping[str, Sequence[str]]) -> np.ndarray:
        """(n_labels, d): per label the normalised mean of its prompts' embeddings; cached by
        `vocabulary` name (the text tower runs once per vocabulary)."""
        cached = self._label_vectors.get(vocabulary)
        if cached is not None:
            return cached
        texts = [t for label in prompts for t in prompts[label]]
        vectors = l2_normalise(self.embedder.embed_texts(texts))
        rows, i = [], 0
        for label in prompts:
            k = len(prompts[label])
            rows.append(vectors[i : i + k].mean(axis=0))
            i += k
        self._label_vectors[vocabulary] = l2_normalise(np.stack(rows))
        return self._label_vectors[vocabulary]

    # ---- image side ------------------------------------------------------------------
    def image_vectors(self, images) -> np.ndarray:
        """(n, d) normalised image vectors; an (n, d) float array is taken as given vectors."""
        if isinstance(images, np.ndarray) and images.ndim == 2 and images.dtype.kind == "f":
            return l2_normalise(images)
        images = list(images)
        if not images:
            return np.zeros((0, getattr(self.embedder, "dim", 0)), np.float32)
        return l2_normalise(self.embedder.embed_images(images))

    def similarities(self, images, vocabulary: str, prompts: Mapping[str, Sequence[str]]) -> np.ndarray:
        """(n, n_labels) cosine similarities."""
        labels = self.label_vectors(vocabulary, prompts)
        vectors = self.image_vectors(images)
        if vectors.shape[0] and vectors.shape[1] != labels.shape[1]:
            raise ValueError(f"image vectors have {vectors.shape[1]} dims, {self.model_id} text vectors {labels.shape[1]}")
        return vectors @ labels.T if vectors.shape[0] else np.zeros((0, labels.shape[0]), np.float32)

    def probabilities(self, images, vocabulary: str, prompts: Mapping[str, Sequence[str]]) -> np.ndarray:
        """(n, n_labels) softmax(logit_scale * cosine) over the vocabulary."""
        z = self.logit_scale * self.similarities(images, vocabulary, prompts).astype(np.float64)
        if z.shape[0] == 0:
            return z
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    # ---- vocabularies ----------------------------------------------------------------
    def expressions(self, face_crops) -> list[tuple[str, dict[str, float]]]:
        """Per face crop (see vision.expression.face_crop): (label, probability per label in
        EXPRESSIONS order)."""
        sims = self.similarities(face_crops, "expressions", EXPRESSION_PROMPTS)
        return [expression_from_similarity(row, self.logit_scale) for row in sims]

    def scene_tags(self, frames, top_k: int = 2, min_prob: float = 0.3) -> list[list[tuple[str, float]]]:
        """Per frame: up to `top_k` (tag, prob) of SCENE_TAGS with prob >= min_prob, best first."""
        probs = self.probabilities(frames, "scenes", SCENE_PROMPTS)
        out = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[: max(0, int(top_k))]
            out.append([(SCENE_TAGS[i], round(float(row[i]), 4)) for i in order if row[i] >= min_prob])
        return out

    def shot_types(self, frames) -> list[tuple[str, float]]:
        """Per frame: the most likely of SHOT_TYPES and its probability."""
        probs = self.probabilities(frames, "shots", SHOT_PROMPTS)
        return [(SHOT_TYPES[int(np.argmax(row))], round(float(row.max()), 4)) for row in probs]
