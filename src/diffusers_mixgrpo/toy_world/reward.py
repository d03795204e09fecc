"""A GenEval-style programmatic reward for the toy world: colour, position and shape of each named object, from pixels.

No weights. Each pixel is foreground if bright enough and gets the nearest palette colour (by chromaticity); the
connected components (8-connected) of each colour are the candidate objects. For every object the prompt names,
each candidate scores

    score = w_color * [candidate has the named colour]
          + w_position * sigmoid(signed distance of its centroid past the image midline, in pixels)
          + w_shape * softmax_k(IoU(candidate, template_k) / temperature)[named shape]

where template_k is shape k drawn into the candidate's bounding box. Objects take distinct candidates (the best
assignment); the image's reward is the mean over objects times a clutter factor, ``1 - min(1, unexplained / scale)``,
where `unexplained` is the foreground area outside the matched candidates and `scale` about one object's area, so
noise and extra blobs earn nothing. The reward is in [0, 1]. An image is judged *correct* when every named object has
its own candidate of the right colour, on the right side, whose best-matching template is the named shape, and
little foreground is left unexplained.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .world import COLOR_NAMES, COLORS, SHAPES, ToyObject, parse_prompt, shape_mask

_PALETTE = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32) / 255.0
_PALETTE_CHROMA = _PALETTE / _PALETTE.max(axis=1, keepdims=True)
_WHITE = COLOR_NAMES.index("white")


@dataclass
class ToyWorldEvaluation:
    """Per-image results of `ToyWorldReward.evaluate`."""

    score: np.ndarray  # (B,) float32 in [0, 1]
    correct: np.ndarray  # (B,) bool: every object right in colour, position and shape
    color_ok: np.ndarray  # (B,) fraction of objects with a component of the named colour
    position_ok: np.ndarray  # (B,) fraction of objects whose named-colour component is on the named side
    shape_ok: np.ndarray  # (B,) fraction of objects fully right (colour, side and shape)


@dataclass
class _Component:
    color: int
    mask: np.ndarray  # (h, w) bool crop at the bounding box
    cx: float
    cy: float

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def _to_float_images(images) -> np.ndarray:
    """(B, H, W, 3) float32 in [0, 1] from PIL images, uint8 or float tensors/arrays."""
    from diffusers_mixgrpo.rewards.base import to_uint8_hwc

    if isinstance(images, torch.Tensor) and torch.is_floating_point(images):
        x = images.detach().float().cpu()
        x = x.unsqueeze(0) if x.ndim == 3 else x
        if x.shape[1] == 3:
            x = x.permute(0, 2, 3, 1)
        return x.clamp(0, 1).contiguous().numpy()
    return to_uint8_hwc(images).astype(np.float32) / 255.0


def _label_components(masks: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of a (N, H, W) bool tensor (0 = background) by max-label propagation."""
    n, h, w = masks.shape
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w).expand(n, h, w)
    labels = torch.where(masks, ids, torch.zeros(()))
    for _ in range(h * w):
        grown = F.max_pool2d(labels.unsqueeze(1), 3, stride=1, padding=1).squeeze(1)
        grown = torch.where(masks, grown, torch.zeros(()))
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.long()


@lru_cache(maxsize=4096)
def _templates(h: int, w: int) -> np.ndarray:
    """(num_shapes, h, w) bool: each shape drawn to fill an h x w box (4x supersampled, half-coverage threshold)."""
    ss = 4
    u = ((np.arange(w * ss) + 0.5) / (w * ss)) * 2 - 1
    v = ((np.arange(h * ss) + 0.5) / (h * ss)) * 2 - 1
    uu, vv = np.meshgrid(u, v)
    # Each template is scaled so that the shape's own extent fills [-1, 1]^2.
    extents = {"circle": (1.0, 1.0), "square": (0.85, 0.85), "triangle": (1.05, 0.95), "cross": (1.0, 1.0)}
    out = []
    for shape in SHAPES:
        ex, ey = extents[shape]
        m = shape_mask(shape, uu * ex, vv * ey).astype(np.float32)
        out.append(m.reshape(h, ss, w, ss).mean(axis=(1, 3)) >= 0.5)
    return np.stack(out)


class ToyWorldReward:
    """Programmatic toy-world reward: ``reward(images, prompts) -> (B,) float32`` in [0, 1], higher is better.

    Args:
        device (`str` or `torch.device`, *optional*): where the scores are returned (computed on the CPU).
        dtype (`torch.dtype`, *optional*): ignored (scores are float32); accepted for the registry's interface.
        color_weight (`float`, defaults to 0.4), position_weight (`float`, defaults to 0.3),
        shape_weight (`float`, defaults to 0.3): partial credits of one object (normalised to sum to 1).
        foreground_threshold (`float`, defaults to 0.35): minimum max-channel value of an object pixel.
        white_threshold (`float`, defaults to 0.55): minimum value of a pixel classed as white (dimmer greys are
            ignored, so dark halos do not form white objects).
        min_area (`int`, defaults to 8): components smaller than this many pixels are not candidate objects (a
            rendered object covers 33 to 90 pixels of a 32x32 image).
        position_softness (`float`, defaults to 1.0): the sigmoid's scale, in pixels, of the position credit.
        shape_temperature (`float`, defaults to 0.04): temperature of the softmax over template IoUs.
        clutter_fraction (`float`, defaults to 0.06): foreground area, as a fraction of the image, not explained by
            the matched objects at which the clutter penalty reaches 1 (the score is multiplied by
            ``1 - min(1, unexplained / (clutter_fraction * H * W))``; 0.06 of 32x32 is about one object). It keeps
            noise and scattered blobs from collecting credit. 0 disables the penalty.
        clutter_tolerance (`float`, defaults to 0.25): an image is judged correct only if its unexplained
            foreground is at most this fraction of the clutter scale.
    """

    def __init__(
        self,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        color_weight: float = 0.4,
        position_weight: float = 0.3,
        shape_weight: float = 0.3,
        foreground_threshold: float = 0.35,
        white_threshold: float = 0.55,
        min_area: int = 8,
        position_softness: float = 1.0,
        shape_temperature: float = 0.04,
        clutter_fraction: float = 0.06,
        clutter_tolerance: float = 0.25,
    ):
        weights = np.array([color_weight, position_weight, shape_weight], dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"The colour/position/shape weights must be >= 0 with a positive sum, got {weights}.")
        if position_softness <= 0 or shape_temperature <= 0:
            raise ValueError("position_softness and shape_temperature must be > 0.")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.weights = weights / weights.sum()
        self.foreground_threshold = foreground_threshold
        self.white_threshold = white_threshold
        self.min_area = int(min_area)
        self.position_softness = position_softness
        self.shape_temperature = shape_temperature
        self.clutter_fraction = clutter_fraction
        self.clutter_tolerance = clutter_tolerance

    def __repr__(self) -> str:
        return f"ToyWorldReward(weights={self.weights.round(3).tolist()}, device={self.device})"

    def __call__(self, images, prompts: Union[str, Sequence[str]]) -> torch.Tensor:
        score = self.evaluate(images, prompts).score
        return torch.from_numpy(score).to(self.device)

    # ------------------------------------------------------------------------------------------------------------

    def components(self, images) -> list[list[_Component]]:
        """The candidate objects of each image: connected components per palette colour."""
        return self._components(images)[0]

    def _components(self, images) -> tuple[list[list[_Component]], np.ndarray]:
        """Candidates per image and each image's foreground pixel count."""
        x = _to_float_images(images)
        b, h, w, _ = x.shape
        value = x.max(axis=-1)
        chroma = x / np.maximum(value, 1e-6)[..., None]
        dist = ((chroma[..., None, :] - _PALETTE_CHROMA) ** 2).sum(-1)  # (B, H, W, C)
        color = dist.argmin(-1)
        fg = (value > self.foreground_threshold) & ((color != _WHITE) | (value > self.white_threshold))
        masks = np.stack([fg & (color == c) for c in range(len(COLOR_NAMES))], axis=1)  # (B, C, H, W)
        labels = _label_components(torch.from_numpy(masks.reshape(-1, h, w))).numpy().reshape(masks.shape)
        out = []
        for i in range(b):
            comps = []
            for c in range(len(COLOR_NAMES)):
                lab = labels[i, c]
                ids, counts = np.unique(lab[lab > 0], return_counts=True)
                for k in ids[counts >= self.min_area]:
                    ys, xs = np.nonzero(lab == k)
                    crop = lab[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] == k
                    # Centroid in [0, 1] image units (pixel centres at (i + 0.5) / size).
                    comps.append(_Component(c, crop, (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h))
            out.append(comps)
        return out, fg.reshape(b, -1).sum(axis=1)

    def _credits(self, obj: ToyObject, comp: _Component, size: int) -> tuple[float, float, float, bool]:
        """(colour, position, shape) credits of one candidate for one object, and whether its best shape is right."""
        color = float(COLOR_NAMES[comp.color] == obj.color)
        past = {"left": 0.5 - comp.cx, "right": comp.cx - 0.5, "top": 0.5 - comp.cy, "bottom": comp.cy - 0.5}
        position = 1.0 / (1.0 + np.exp(-past[obj.position] * size / self.position_softness))
        templates = _templates(*comp.mask.shape)
        inter = (templates & comp.mask).sum(axis=(1, 2))
        union = (templates | comp.mask).sum(axis=(1, 2))
        iou = inter / np.maximum(union, 1)
        logits = iou / self.shape_temperature
        prob = np.exp(logits - logits.max())
        prob /= prob.sum()
        k = SHAPES.index(obj.shape)
        return color, float(position), float(prob[k]), bool(iou.argmax() == k)

    def evaluate(self, images, prompts: Union[str, Sequence[str]]) -> ToyWorldEvaluation:
        """Scores and per-component judgements of a batch (see the module docstring)."""
        comps, fg_area = self._components(images)
        b = len(comps)
        prompts = [prompts] * b if isinstance(prompts, str) else list(prompts)
        if len(prompts) != b:
            raise ValueError(f"Got {b} images but {len(prompts)} prompts; give one prompt per image.")
        size = _to_float_images(images).shape[1] if b else 0
        clutter_scale = self.clutter_fraction * size * size
        score = np.zeros(b, dtype=np.float32)
        correct = np.zeros(b, dtype=bool)
        color_ok, position_ok, shape_ok = (np.zeros(b, dtype=np.float32) for _ in range(3))
        for i, (cands, prompt) in enumerate(zip(comps, prompts)):
            objects = parse_prompt(prompt)
            n = len(objects)
            if not cands:
                continue
            credits = [[self._credits(o, c, size) for c in cands] for o in objects]  # [obj][cand]
            values = np.array([[float(np.dot(self.weights, cr[:3])) for cr in row] for row in credits])
            # Objects take distinct candidates; with fewer candidates than objects, the leftovers score 0.
            best, best_assign = -1.0, None
            for assign in permutations(range(len(cands)), min(n, len(cands))):
                total = sum(values[j, a] for j, a in enumerate(assign))
                if total > best:
                    best, best_assign = total, assign
            unexplained = fg_area[i] - sum(cands[a].area for a in best_assign)
            clutter = min(1.0, unexplained / clutter_scale) if clutter_scale > 0 else 0.0
            score[i] = best / n * (1.0 - clutter)
            # Judgements use each object's best candidate of the named colour (independently of the others).
            oks = []
            for row in credits:
                of_color = [cr for cr in row if cr[0] == 1.0]
                on_side = [cr for cr in of_color if cr[1] > 0.5]
                full = [cr for cr in on_side if cr[3]]
                oks.append((bool(of_color), bool(on_side), bool(full)))
            color_ok[i] = np.mean([o[0] for o in oks])
            position_ok[i] = np.mean([o[1] for o in oks])
            shape_ok[i] = np.mean([o[2] for o in oks])
            full_assign = best_assign is not None and len(best_assign) == n
            correct[i] = (
                bool(shape_ok[i] == 1.0)
                and full_assign
                and clutter <= self.clutter_tolerance
                and _distinct_full(credits, len(cands))
            )
        return ToyWorldEvaluation(score.clip(0, 1), correct, color_ok, position_ok, shape_ok)


def _distinct_full(credits, num_cands: int) -> bool:
    """Whether distinct candidates can be fully right for all objects (e.g. not one blob claimed twice)."""
    n = len(credits)
    ok = [[cr[0] == 1.0 and cr[1] > 0.5 and cr[3] for cr in row] for row in credits]
    return any(all(ok[j][a] for j, a in enumerate(assign)) for assign in permutations(range(num_cands), n))


def toy_world_accuracy(images, prompts: Union[str, Sequence[str]], **kwargs) -> float:
    """Fraction of images judged correct by `ToyWorldReward` (GenEval-style accuracy)."""
    return float(ToyWorldReward(**kwargs).evaluate(images, prompts).correct.mean())


def make_toy_world_reward(
    device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None, **kwargs
) -> ToyWorldReward:
    """Registry factory of the "toy_world" reward."""
    return ToyWorldReward(device=device, dtype=dtype, **kwargs)
