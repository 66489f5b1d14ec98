"""A torch `Dataset` over query `Sample`s, for custom trainers (issue 5).

    ds = AnimeAssetsDataset(dataset.query(...), size=512, crop="instance")
    loader = DataLoader(ds, batch_size=8, num_workers=4, multiprocessing_context="spawn",
                        collate_fn=collate)

Each item is a dict: `pixel_values` float32 3xHxW in [0, 1] ([-1, 1] with `normalize=True`),
`mask` float32 1xHxW (1 = the character; this instance only for an instance sample), `caption`
str (trigger / character name first, as in the kohya export), `id` str, `character` str | None.

Resizing keeps the aspect ratio: the crop (the same crop as `export_kohya`'s) is scaled to fit
inside `size` and centred on a zero (black) canvas; the padding has mask 0, so a masked loss never
learns the bars.  Every item has the same shape, so batches need no buckets.

Spawn-safe: the dataset holds only plain data (the samples' paths and strings, a few numbers);
files are opened in `__getitem__`, in the worker.  `transform` (a function of the item dict
returning the item dict) must be picklable too (a module-level function) for spawn workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from anime_assets.export.kohya import CONTEXT, build_caption, render_sample
from anime_assets.query import Sample


def _letterbox(a: np.ndarray, hw: tuple[int, int], interp_down: int, interp_up: int) -> np.ndarray:
    import cv2

    h, w = a.shape[:2]
    H, W = hw
    scale = min(H / h, W / w)
    nh, nw = max(1, min(H, int(round(h * scale)))), max(1, min(W, int(round(w * scale))))
    if (nh, nw) != (h, w):
        a = cv2.resize(a, (nw, nh), interpolation=interp_down if scale < 1 else interp_up)
    out = np.zeros((H, W) + a.shape[2:], a.dtype)
    top, left = (H - nh) // 2, (W - nw) // 2
    out[top:top + nh, left:left + nw] = a
    return out


class AnimeAssetsDataset(Dataset):
    """Samples as training tensors (see the module doc).

    size: int (square) or (height, width).  crop: "instance" or "frame".  with_mask: read the
    character layer / instance mask (else the mask is 1 on the image and 0 on the padding).
    transform: optional picklable function item -> item.  normalize: pixel values in [-1, 1].
    trigger: a token put first in every caption.
    """

    def __init__(self, samples: Iterable[Sample], size: int | tuple[int, int] = 512, crop: str = "instance",
                 with_mask: bool = True, transform: Callable | None = None, normalize: bool = False,
                 trigger: str | None = None, context: float = CONTEXT):
        if crop not in ("instance", "frame"):
            raise ValueError(f"crop must be 'instance' or 'frame', not {crop!r}")
        if isinstance(size, int):
            size = (size, size)
        size = tuple(int(v) for v in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be an int or (height, width), not {size!r}")
        self.samples = tuple(samples)
        self.size = size
        self.crop = crop
        self.with_mask = bool(with_mask)
        self.transform = transform
        self.normalize = bool(normalize)
        self.trigger = trigger
        self.context = float(context)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        import cv2

        s = self.samples[i]
        r = render_sample(s, self.crop, self.with_mask, self.context)
        rgb = _letterbox(r.rgb, self.size, cv2.INTER_AREA, cv2.INTER_CUBIC)
        m = r.mask if r.mask is not None else np.full(r.rgb.shape[:2], 255, np.uint8)
        m = _letterbox(m, self.size, cv2.INTER_AREA, cv2.INTER_LINEAR)
        px = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)
        if self.normalize:
            px = px.mul_(2.0).sub_(1.0)
        item = {
            "pixel_values": px,
            "mask": torch.from_numpy(m).float().div_(255.0).unsqueeze(0),
            "caption": build_caption(s, self.trigger)[0],
            "id": s.id,
            "character": s.character_name or s.character_id,
        }
        return self.transform(item) if self.transform is not None else item


def collate(items: list[dict]) -> dict:
    """Stack the tensors of a batch; other values (captions, ids, characters that may be None)
    become lists.  (torch's default collate fails on None.)"""
    out = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


AnimeAssetsDataset.collate = staticmethod(collate)
