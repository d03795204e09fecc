"""OCR reward for text rendering: how closely the text read from an image matches the text quoted in its prompt.

This is the reward of Flow-GRPO's text-rendering task (`flow_grpo/ocr.py`, `OcrScorer.__call__`, in
github.com/yifan123/flow_grpo, commit ac4c86e, MIT licence). Its rule, which `text_reward` follows:

1. the target is the text between the first two double quotes of the prompt, `prompt.split('"')[1]`;
2. the target and the text read from the image (every detected line, joined in reading order with no separator) are
   both lower-cased and stripped of their spaces, `.replace(" ", "").lower()`;
3. the distance is 0 if the target occurs in the read text (extra text in the image costs nothing), otherwise the
   Levenshtein distance between the two, capped at the target's length;
4. reward = `1 - distance / len(target)`, in [0, 1]: 1 for the exact text, 0 for a blank image.

Where Flow-GRPO would crash or guess, this module raises one clear error instead: a prompt without a double quote
(Flow-GRPO: an `IndexError` from `split('"')[1]`) or with nothing but spaces between its quotes (Flow-GRPO: a
`ZeroDivisionError`) raises `ValueError` naming the prompt; an OCR failure propagates (Flow-GRPO prints it and
scores the image 0).

The text is read by RapidOCR (the `rapidocr` package, Apache-2.0): PP-OCRv6 small detection and recognition models
(PaddleOCR's, Apache-2.0) converted to ONNX, shipped inside the wheel and run by ONNX Runtime on the CPU, so the
reward works offline with no download. Flow-GRPO uses PaddleOCR 2.9.1 (its README's pin) with English PP-OCR
models of earlier generations; as there, the angle classifier is off and lines recognised with a confidence below 0.5
are dropped.
"""

from collections.abc import Callable, Sequence
from typing import Optional, Union

import numpy as np
import torch

from .base import ImageBatch, batch_size_of, check_prompts, resolve_device, to_uint8_hwc
from .jpeg import ddpo_uint8

TextReader = Callable[[np.ndarray], list[str]]
"""Reads one (H, W, 3) uint8 RGB image: the lines of text found, in reading order."""

MISSING_PACKAGE = (
    "The 'ocr' reward needs the rapidocr and onnxruntime packages; install them with "
    "`pip install 'diffusers-mixgrpo[ocr]'`."
)


def quoted_text(prompt: str) -> str:
    """The text the prompt asks to render: what follows its first `"`, up to the next one (Flow-GRPO's
    `prompt.split('"')[1]`, so an unclosed quote runs to the end of the prompt).

    Raises:
        ValueError: the prompt holds no `"`, or only spaces between its quotes (there is nothing to read).
    """
    parts = prompt.split('"')
    if len(parts) < 2:
        raise ValueError(
            f"The 'ocr' reward scores the text between double quotes in the prompt, and {prompt!r} has none; write "
            "the text to render in quotes, e.g. 'a shop sign that says \"OPEN\"'."
        )
    if not normalize_text(parts[1]):
        raise ValueError(f"The quoted text of the prompt {prompt!r} is empty; there is no text to score.")
    return parts[1]


def normalize_text(text: str) -> str:
    """Flow-GRPO's normalisation of both texts: spaces removed (only U+0020), lower-cased."""
    return text.replace(" ", "").lower()


def edit_distance(a: str, b: str) -> int:
    """The Levenshtein distance: the fewest single-character insertions, deletions and substitutions from `a` to `b`.

    The textbook dynamic programme, one row at a time: O(len(a) * len(b)) time, O(len(b)) memory."""
    previous = list(range(len(b) + 1))  # distances from "" to each prefix of b
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(
                min(
                    previous[j] + 1,  # delete char_a
                    current[j - 1] + 1,  # insert char_b
                    previous[j - 1] + (char_a != char_b),  # substitute (free when equal)
                )
            )
        previous = current
    return previous[-1]


def text_reward(read: str, target: str) -> float:
    """Flow-GRPO's OCR reward of one image: `1 - min(distance, len(target)) / len(target)` after normalisation, with
    distance 0 when the target occurs in the read text (see the module docstring).

    Args:
        read (`str`): the text read from the image, its lines joined.
        target (`str`): the quoted text of the prompt (`quoted_text(prompt)`).
    """
    read, target = normalize_text(read), normalize_text(target)
    if not target:
        raise ValueError("The target text is empty (or only spaces); there is no text to score.")
    distance = 0 if target in read else min(edit_distance(read, target), len(target))
    return 1.0 - distance / len(target)


def rapidocr_reader(text_score: float = 0.5, num_threads: Optional[int] = None) -> TextReader:
    """A `TextReader` on RapidOCR with the models its wheel ships (PP-OCRv6 small det + rec, ONNX Runtime, CPU).

    Args:
        text_score (`float`, defaults to 0.5): lines recognised with a lower confidence are dropped (PaddleOCR's
            `drop_score` default, which Flow-GRPO keeps).
        num_threads (`int`, *optional*): ONNX Runtime's intra-op threads; default: ONNX Runtime's choice (all cores).
    """
    try:
        import onnxruntime  # noqa: F401  (rapidocr's default engine; it only imports it when a model loads)
        from rapidocr import RapidOCR
    except ImportError as err:
        raise ImportError(MISSING_PACKAGE) from err

    engine = RapidOCR(
        params={
            "Global.use_cls": False,  # Flow-GRPO: use_angle_cls=False, cls=False
            "Global.text_score": text_score,
            "Global.log_level": "error",  # not a warning per blank image
            "EngineConfig.onnxruntime.intra_op_num_threads": -1 if num_threads is None else int(num_threads),
        }
    )

    def read(image: np.ndarray) -> list[str]:
        # An ndarray goes to the models as it is, and they expect OpenCV's BGR order.
        result = engine(np.ascontiguousarray(image[..., ::-1]))
        return list(result.txts) if result.txts else []

    return read


class OCRReward:
    """Flow-GRPO's text-rendering reward: `1 - normalised edit distance` between the prompt's quoted text and the
    text an OCR model reads from the image, in [0, 1].

    Images are read one at a time (the OCR models batch the text lines of an image); the scores come back as a (B,)
    float32 tensor on `device`. Float tensors become pixels as in Flow-GRPO, `(x * 255).round().clamp(0, 255)`.

    Args:
        device (`str` or `torch.device`, *optional*): where the scores are returned. The OCR runs on the CPU (as in
            Flow-GRPO), whatever the device.
        dtype (`torch.dtype`, *optional*): accepted for the registry's factory signature; unused.
        text_score (`float`, defaults to 0.5): lines read with a lower confidence are ignored.
        num_threads (`int`, *optional*): CPU threads of the OCR models (default: all cores).
        reader (`Callable`, *optional*): another OCR, `reader(rgb_uint8_hwc_array) -> list of lines`; default:
            `rapidocr_reader(text_score, num_threads)`.

    Raises:
        ImportError: rapidocr or onnxruntime is not installed (`pip install 'diffusers-mixgrpo[ocr]'`).
        ValueError: at call time, a prompt has no quoted text (see `quoted_text`).
    """

    name = "ocr"

    def __init__(
        self,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        text_score: float = 0.5,
        num_threads: Optional[int] = None,
        reader: Optional[TextReader] = None,
    ):
        if not 0.0 <= text_score <= 1.0:
            raise ValueError(f"text_score must be in [0, 1], got {text_score}.")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}.")
        self.device = resolve_device(device)
        self.reader = reader if reader is not None else rapidocr_reader(text_score, num_threads)

    def read(self, images: ImageBatch) -> list[str]:
        """The text read from each image, its lines joined with no separator (Flow-GRPO's `"".join`)."""
        return ["".join(self.reader(array)) for array in to_uint8_hwc(ddpo_uint8(images))]

    def __call__(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        targets = [quoted_text(p) for p in check_prompts(prompts, batch_size_of(images))]  # before any OCR
        scores = [text_reward(read, target) for read, target in zip(self.read(images), targets)]
        return torch.tensor(scores, dtype=torch.float32, device=self.device)

    def __repr__(self) -> str:
        return f"OCRReward(device={self.device})"
