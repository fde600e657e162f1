"""Optical character recognition of screenshots: the words on a screen and where they are.

RapidOCR (`rapidocr` 3.10, github.com/RapidAI/RapidOCR) runs PaddleOCR's PP-OCRv6 text detection
and recognition models through onnxruntime. Its wheel ships the ONNX models (Apache-2.0, see its
MODEL_LICENSES.md), so this runs offline. The angle classifier (`Global.use_cls`) stays off:
screenshots are upright, and with it on, upright words were read upside down ("good" -> "poo6").

`read_text_boxes(image)` returns every text line it finds as a `TextBox` in the image's pixel
coordinates; `lib.screen_layout` turns them back into the screen's structure.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Lines below this recognition confidence are dropped (RapidOCR's own default is 0.5).
MIN_SCORE = 0.5
# The recogniser sometimes drops the narrow space between a date and a time: "2025-09-1314:30".
GLUED_DATE_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})(\d{1,2}:\d{2})$")
# PP-OCR's recogniser knows Chinese too, and reads a lone asterisk (a required field's mark) as
# the character 米, which looks like one.
LOOKALIKES = str.maketrans({"米": "*", "＊": "*"})


@dataclass(frozen=True)
class TextBox:
    """One recognised run of text and its axis-aligned box, in pixels (x right, y down)."""

    text: str
    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0
    ink: float = 0.0  # height of the glyphs' ink in pixels (0: not measured); the box is padded
    words: tuple = ()  # for a phrase joined from several words (lib.screen_layout.phrases): those

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2

    def inside(self, x0: float, y0: float, x1: float, y1: float, margin: float = 2) -> bool:
        """True when this box's centre lies within the rectangle (grown by `margin` pixels)."""
        cx = (self.x0 + self.x1) / 2
        return x0 - margin <= cx <= x1 + margin and y0 - margin <= self.cy <= y1 + margin


_lock = threading.Lock()  # one engine, shared; onnxruntime sessions are not re-entrant here


@lru_cache(maxsize=1)
def _engine(threads: int):
    from rapidocr import RapidOCR

    return RapidOCR(params={"Global.use_cls": False, "Global.log_level": "error", "Global.text_score": MIN_SCORE,
                            "Global.return_word_box": True,
                            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                            "EngineConfig.onnxruntime.inter_op_num_threads": 1})


def as_rgb_array(image):
    """A screenshot (path, PIL image or HxWx3 uint8 array) as an RGB numpy array. Transparent
    images are composited on white, as a browser shows them: black text on a transparent PNG
    would otherwise become a black page."""
    import numpy as np
    from PIL import Image

    if isinstance(image, np.ndarray):
        return image
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            image = opened.copy()
    return np.asarray(on_white(image))


def on_white(image):
    """A PIL image as RGB, transparent areas composited on a white background."""
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def ink_extent(pixels, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float] | None:
    """(left, right, height) in pixels of the glyphs of a word box, or None if it holds no ink.

    Ink: pixels clearly different (by 60 of 255) from the box's border colour. The height is the
    unbroken run of inked rows around the box's middle: OCR boxes are padded and overlap the lines
    above and below, so their height says little about the font size. Left and right: RapidOCR
    places word boxes from the recogniser's character positions, up to ~6 px off the glyphs, so
    each end moves to where the run of inked columns it falls in ends (gaps of 1 px, inside a
    letter, do not end it).
    """
    import numpy as np

    crop = pixels[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))].astype(float).mean(axis=2)
    if crop.size == 0:
        return None
    background = np.median(np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]]))
    ink = np.abs(crop - background) > 60
    rows = ink.any(axis=1) & (ink.mean(axis=1) < 0.9)  # a row inked end to end is a border, not glyphs
    filled = np.flatnonzero(rows)
    if not len(filled):
        return None
    middle = filled[np.argmin(np.abs(filled - len(rows) // 2))]
    top = bottom = middle
    while top > 0 and rows[top - 1]:
        top -= 1
    while bottom < len(rows) - 1 and rows[bottom + 1]:
        bottom += 1
    reach = 8
    left_edge, right_edge = max(0, int(x0) - reach), min(pixels.shape[1], int(np.ceil(x1)) + reach)
    box = pixels[int(y0):int(np.ceil(y1)), left_edge:right_edge].astype(float).mean(axis=2)
    marked = np.abs(box - background) > 60
    # a column inked from the box's top to its bottom, beyond the glyphs' rows, is a drawn line
    columns = marked[top:bottom + 1].any(axis=0) & ~(marked.mean(axis=0) > 0.9)
    inked = np.flatnonzero(columns[int(x0) - left_edge:int(np.ceil(x1)) - left_edge]) + int(x0) - left_edge
    if not len(inked):
        return None
    start, end = inked[0], inked[-1]
    while start > 1 and (columns[start - 1] or columns[start - 2]):
        start -= 1
    while end < len(columns) - 2 and (columns[end + 1] or columns[end + 2]):
        end += 1
    return float(left_edge + start), float(left_edge + end + 1), float(bottom - top + 1)


def read_text_boxes(image, threads: int = 1) -> list[TextBox]:
    """The words of a screenshot (path, PIL image or RGB array) with their boxes, top to bottom.

    One TextBox per word (RapidOCR's word boxes), with the line's recognition score and the
    word's ink height; `lib.screen_layout.phrases` joins words into phrases by their gaps.
    `threads`: onnxruntime's intra-op threads (1 here: 2-3 s for a 1024-px screenshot on this
    course's CPU). Raises whatever PIL raises for an unreadable file.
    """
    import numpy as np

    pixels = as_rgb_array(image)
    with _lock:
        result = _engine(threads)(pixels[:, :, ::-1].copy())  # RapidOCR takes OpenCV's BGR order
    if result.boxes is None:
        return []
    boxes = []
    for corners, text, score, words in zip(result.boxes, result.txts, result.scores, result.word_results):
        pieces = [(w[0], w[2]) for w in words if w and w[2] is not None] or [(text, corners)]
        for word, word_corners in pieces:
            c = np.asarray(word_corners, dtype=float)
            x0, y0, x1, y1 = float(c[:, 0].min()), float(c[:, 1].min()), float(c[:, 0].max()), float(c[:, 1].max())
            ink = ink_extent(pixels, x0, y0, x1, y1)
            if ink is not None:  # the word's own glyphs, left and right
                x0, x1 = ink[0], ink[1]
            if str(word).strip():
                text = GLUED_DATE_TIME.sub(r"\1 \2", str(word).strip().translate(LOOKALIKES))
                boxes.append(TextBox(text, x0, y0, x1, y1, float(score), ink[2] if ink else 0.0))
    return sorted(boxes, key=lambda b: (b.y0, b.x0))
