"""Configurable resources: where data lives, which models run. Set in the UI's launchpad or in code."""


import functools
from pathlib import Path

import dagster as dg

from anime_assets import settings
from anime_assets.keys import episode_key_from_filename, validate_key
from anime_assets.storage.media import MediaStore
from anime_assets.storage.tables import FrameTables


class StorageResource(dg.ConfigurableResource):
    """The data root: episodes inbox, media store and LanceDB tables under one folder."""

    data_root: str = ""  # empty: $ANIME_ASSETS_DATA or ./data
    image_format: str = "jpg"  # kept frames: jpg (fast, q=jpeg_quality) or png (lossless, ~10x slower)
    jpeg_quality: int = 95

    @property
    def root(self) -> Path:
        return settings.data_root(self.data_root or None)

    def media(self) -> MediaStore:
        return MediaStore(settings.media_dir(self.root))

    def tables(self) -> FrameTables:
        return FrameTables(settings.lancedb_uri(self.root))

    def frames_for_reading(self) -> FrameTables:
        """The existing `frames` table, opened with whatever embedding model it holds."""
        tables = self.tables()
        tables.open_frames()
        return tables

    def episodes_dir(self) -> Path:
        return settings.episodes_dir(self.root)

    def episode_video(self, episode: str) -> Path:
        """The inbox file whose name gives this episode key (keys are sanitised, so no traversal)."""
        validate_key(episode, "episode")
        folder = self.episodes_dir()
        matches = []
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if p.is_file() and p.suffix.lower() in settings.VIDEO_EXTENSIONS:
                    try:
                        if episode_key_from_filename(p.name) == episode:
                            matches.append(p)
                    except ValueError:
                        continue
        if not matches:
            raise FileNotFoundError(f"episode {episode}: no video file for it in {folder}")
        if len(matches) > 1:
            raise ValueError(f"episode {episode}: several files map to this key: {', '.join(m.name for m in matches)}")
        return matches[0]


class ShotDetectorResource(dg.ConfigurableResource):
    use_transnet: bool = True  # False: classical detector only (weaker on dissolves)

    def scorer(self):
        if not self.use_transnet:
            return None
        from anime_assets.models.transnet import get_transnet

        return get_transnet()


class EmbedderResource(dg.ConfigurableResource):
    """CLIP through open_clip by default; offline colour-layout embedder when weights are missing."""

    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"  # a tag, 'hf-hub:org/repo', or a local checkpoint path
    device: str = "cpu"
    allow_offline_fallback: bool = True
    allow_download: bool = True  # fetch missing weights from the Hugging Face hub (never when HF_HUB_OFFLINE=1)
    batch_size: int = 32

    def load(self):
        """(embedder, warning or None); loaded once per process, so once per run."""
        return _load_embedder(self.model, self.pretrained, self.device, self.allow_offline_fallback,
                              self.allow_download, self.batch_size)


@functools.lru_cache(maxsize=4)
def _load_embedder(model: str, pretrained: str, device: str, allow_fallback: bool, allow_download: bool,
                   batch_size: int):
    from anime_assets.vision.embed import load_embedder

    return load_embedder(model, pretrained, device=device, allow_fallback=allow_fallback,
                         allow_download=allow_download, batch_size=batch_size)
