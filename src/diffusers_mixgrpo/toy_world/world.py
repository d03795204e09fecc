"""The toy world: vocabulary, prompt grammar and parser, procedural renderer and the train / held-out prompt split.

Prompts name one or two coloured shapes and where they are::

    a red circle on the left
    a red circle on the left and a blue square on the right

Two-object prompts always put the objects on opposite sides (left/right or top/bottom). Images are rendered
procedurally on a black background (32x32 RGB by default) with a small, seeded jitter of size and position.

An object is a (colour, shape, position) *triple*. A fixed sixth of the triples (16 of 96) is held out: no training
prompt contains one, every held-out prompt contains at least one, so held-out accuracy measures generalisation to
combinations never seen in training.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Optional, Union

import numpy as np
from PIL import Image

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "yellow": (240, 220, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "purple": (170, 60, 220),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
OPPOSITE: dict[str, str] = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

# Every word a prompt can contain (the tokenizers of the base model are built over this list).
VOCABULARY: tuple[str, ...] = ("a", "and", "on", "the", *COLOR_NAMES, *SHAPES, *POSITIONS)

DEFAULT_IMAGE_SIZE = 32

# Object centres as fractions of the image side (x, y), radius range and jitter, also as fractions of the side.
_CENTERS: dict[str, tuple[float, float]] = {
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
}
_RADIUS_RANGE = (0.13, 0.17)

#: Rendering styles. "clean" is the world's ideal picture: saturated shapes on black. "hazy" is the same picture seen
#: through a grey haze, ``(1 - HAZE_STRENGTH) * clean + HAZE_STRENGTH * HAZE_COLOR``: a washed-out, low-contrast
#: image, the toy counterpart of the low-quality half of a web-scale data set. The base model is trained on a mix of
#: both (`ToyBaseTrainingConfig.hazy_fraction`), so it draws either; preference alignment should make it draw "clean".
STYLES: tuple[str, ...] = ("clean", "hazy")
HAZE_COLOR: tuple[int, int, int] = (160, 160, 160)
HAZE_STRENGTH = 0.4
_JITTER = 0.04
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ToyObject:
    """One object of a prompt: a coloured shape at a position."""

    color: str
    shape: str
    position: str

    def __post_init__(self):
        if self.color not in COLORS:
            raise ValueError(f"Unknown colour {self.color!r}; choose one of {', '.join(COLOR_NAMES)}.")
        if self.shape not in SHAPES:
            raise ValueError(f"Unknown shape {self.shape!r}; choose one of {', '.join(SHAPES)}.")
        if self.position not in POSITIONS:
            raise ValueError(f"Unknown position {self.position!r}; choose one of {', '.join(POSITIONS)}.")

    @property
    def phrase(self) -> str:
        return f"a {self.color} {self.shape} on the {self.position}"


# ----------------------------------------------------------------------------------------------------------------
# Grammar
# ----------------------------------------------------------------------------------------------------------------


def make_prompt(objects: Union[ToyObject, Sequence[ToyObject]]) -> str:
    """The prompt naming `objects` (one, or two on opposite sides)."""
    objects = (objects,) if isinstance(objects, ToyObject) else tuple(objects)
    _check_layout(objects)
    return " and ".join(o.phrase for o in objects)


def parse_prompt(prompt: str) -> tuple[ToyObject, ...]:
    """The objects a prompt names; the inverse of `make_prompt`. Raises `ValueError` on text outside the grammar."""
    words = prompt.strip().lower().split()
    objects, i = [], 0
    while True:
        chunk = words[i : i + 6]
        if len(chunk) != 6 or chunk[0] != "a" or chunk[3:5] != ["on", "the"]:
            raise ValueError(f"Cannot parse {prompt!r}: expected 'a <colour> <shape> on the <position>' phrases.")
        objects.append(ToyObject(chunk[1], chunk[2], chunk[5]))
        i += 6
        if i == len(words):
            break
        if words[i] != "and":
            raise ValueError(f"Cannot parse {prompt!r}: phrases must be joined by 'and'.")
        i += 1
    objects = tuple(objects)
    _check_layout(objects)
    return objects


def _check_layout(objects: tuple[ToyObject, ...]) -> None:
    if len(objects) not in (1, 2):
        raise ValueError(f"A toy-world prompt names one or two objects, got {len(objects)}.")
    if len(objects) == 2:
        a, b = objects
        if OPPOSITE[a.position] != b.position:
            raise ValueError(f"Two objects must be on opposite sides (left/right or top/bottom), got {a} and {b}.")
        if (a.color, a.shape) == (b.color, b.shape):
            raise ValueError(f"The two objects of a prompt must differ in colour or shape, got {a} twice.")


# ----------------------------------------------------------------------------------------------------------------
# Train / held-out split
# ----------------------------------------------------------------------------------------------------------------


def is_heldout_object(obj: ToyObject) -> bool:
    """Whether a (colour, shape, position) triple is held out of training.

    A modular rule picks 16 of the 96 triples: 4 per shape and per position, and at most one position per
    colour-shape pair, so every colour-shape pair is still seen in training at three or four positions.
    """
    c, s, p = COLOR_NAMES.index(obj.color), SHAPES.index(obj.shape), POSITIONS.index(obj.position)
    return (c + 2 * s + p) % 6 == 0


def is_heldout_prompt(prompt: Union[str, Sequence[ToyObject]]) -> bool:
    """A prompt is held out iff one of its objects is a held-out triple."""
    objects = parse_prompt(prompt) if isinstance(prompt, str) else tuple(prompt)
    return any(is_heldout_object(o) for o in objects)


@cache
def all_prompts(num_objects: int) -> tuple[str, ...]:
    """Every prompt of the grammar with `num_objects` objects (96 single-object, 2208 two-object), in a fixed order."""
    singles = [ToyObject(c, s, p) for p in POSITIONS for c in COLOR_NAMES for s in SHAPES]
    if num_objects == 1:
        return tuple(make_prompt(o) for o in singles)
    if num_objects == 2:
        return tuple(
            make_prompt((a, b))
            for a in singles
            for b in singles
            if b.position == OPPOSITE[a.position] and (a.color, a.shape) != (b.color, b.shape)
        )
    raise ValueError(f"num_objects must be 1 or 2, got {num_objects}.")


@cache
def _split(num_objects: int, heldout: bool) -> tuple[str, ...]:
    return tuple(p for p in all_prompts(num_objects) if is_heldout_prompt(p) == heldout)


def train_prompt_pool(num_objects: Optional[int] = None) -> tuple[str, ...]:
    """All training prompts (those without a held-out triple), single-object first."""
    if num_objects is None:
        return _split(1, False) + _split(2, False)
    return _split(num_objects, False)


def train_prompts(n: int, seed: int = 0, two_object_fraction: float = 0.5) -> list[str]:
    """`n` training prompts drawn with replacement, deterministically from `seed`.

    Each draw is a two-object prompt with probability `two_object_fraction`, else a single-object prompt; within
    a kind the prompt is uniform over the training pool.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    if not 0.0 <= two_object_fraction <= 1.0:
        raise ValueError(f"two_object_fraction must be in [0, 1], got {two_object_fraction}.")
    rng = np.random.default_rng(seed)
    singles, pairs = _split(1, False), _split(2, False)
    two = rng.random(n) < two_object_fraction
    i1, i2 = rng.integers(len(singles), size=n), rng.integers(len(pairs), size=n)
    return [pairs[b] if t else singles[a] for t, a, b in zip(two, i1, i2)]


HELDOUT_NUM_TWO_OBJECT = 16


@cache
def _heldout_list() -> tuple[str, ...]:
    pairs = _split(2, True)
    picked = np.random.default_rng(1234).choice(len(pairs), size=HELDOUT_NUM_TWO_OBJECT, replace=False)
    return _split(1, True) + tuple(pairs[i] for i in sorted(picked))


def heldout_prompts(num_objects: Optional[int] = None) -> list[str]:
    """The fixed held-out evaluation prompts: all 16 held-out single-object prompts, then 16 two-object ones.

    Args:
        num_objects (`int`, *optional*): 1 or 2 to get only that kind; `None` (default) for all 32.
    """
    prompts = _heldout_list()
    if num_objects is None:
        return list(prompts)
    if num_objects not in (1, 2):
        raise ValueError(f"num_objects must be None, 1 or 2, got {num_objects}.")
    return [p for p in prompts if len(parse_prompt(p)) == num_objects]


# ----------------------------------------------------------------------------------------------------------------
# Renderer
# ----------------------------------------------------------------------------------------------------------------


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v), in units of the object's radius around its centre (v pointing down), are inside."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.85
    if shape == "triangle":  # apex up, base down
        return (av <= 0.95) & (au <= 1.05 * (v + 0.95) / 1.9)
    if shape == "cross":
        return ((au <= 1.0) & (av <= 0.27)) | ((av <= 1.0) & (au <= 0.27))
    raise ValueError(f"Unknown shape {shape!r}; choose one of {', '.join(SHAPES)}.")


def render_objects(
    objects: Sequence[ToyObject], seed: int = 0, size: int = DEFAULT_IMAGE_SIZE, style: str = "clean"
) -> np.ndarray:
    """Render `objects` as a (size, size, 3) uint8 array; deterministic given `seed` (anti-aliased, 4x supersampled).

    `style` is one of `STYLES`: "clean" (default) or "hazy" (the same picture washed out by a grey haze).
    """
    if style not in STYLES:
        raise ValueError(f"Unknown style {style!r}; choose one of {', '.join(STYLES)}.")
    rng = np.random.default_rng(seed)
    n = size * _SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / _SUPERSAMPLE  # pixel units
    x, y = np.meshgrid(coords, coords)
    canvas = np.zeros((n, n, 3), dtype=np.float32)
    for obj in objects:
        cx, cy = _CENTERS[obj.position]
        cx, cy = (np.array([cx, cy]) + rng.uniform(-_JITTER, _JITTER, size=2)) * size
        r = rng.uniform(*_RADIUS_RANGE) * size
        inside = shape_mask(obj.shape, (x - cx) / r, (y - cy) / r)
        canvas[inside] = np.asarray(COLORS[obj.color], dtype=np.float32)
    image = canvas.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    if style == "hazy":
        image = (1 - HAZE_STRENGTH) * image + HAZE_STRENGTH * np.asarray(HAZE_COLOR, dtype=np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def render(prompt: str, seed: int = 0, size: int = DEFAULT_IMAGE_SIZE, style: str = "clean") -> Image.Image:
    """Render a prompt as a PIL image (deterministic given `seed`; `style` as in `render_objects`)."""
    return Image.fromarray(render_objects(parse_prompt(prompt), seed=seed, size=size, style=style))


def render_batch(prompts: Sequence[str], seeds: Sequence[int], size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Render prompts with one seed each into a (B, size, size, 3) uint8 array."""
    if len(prompts) != len(seeds):
        raise ValueError(f"Got {len(prompts)} prompts but {len(seeds)} seeds.")
    return np.stack([render_objects(parse_prompt(p), seed=int(s), size=size) for p, s in zip(prompts, seeds)])
