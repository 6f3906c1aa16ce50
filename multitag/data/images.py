"""Decode any image the pipeline meets into RGB uint8 of a fixed size.

One function decodes for preprocessing, serving and validation alike, so a model never sees
pixels prepared differently at training and at prediction time.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast, get_args

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from multitag.config import ResizeMode
from multitag.errors import MultitagError, Problem, UsageError

DEFAULT_MAX_PIXELS = 80_000_000

# We enforce our own pixel cap (per call) before decoding; Pillow's global guard would only warn.
Image.MAX_IMAGE_PIXELS = None


class ImageError(MultitagError, ValueError):
    """An image cannot be used, and why (`problem`: a reason code for quarantine tables and API errors, and a detail)."""

    def __init__(self, reason: str, detail: str):
        self.problem = Problem(reason, detail)
        super().__init__(str(self.problem))


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    width: int
    height: int
    format: str
    mode: str


def open_checked(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1) -> Image.Image:
    """Open image bytes and check them before any pixel is decoded (bombs, tiny or empty files)."""
    if not data:
        raise ImageError("empty_file", "the file has zero bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not_an_image", "the content is not a format Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError("truncated", f"cannot read the header: {err}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError("decompression_bomb", f"{width}x{height} exceeds the {max_pixels:,} pixel cap")
    if min(width, height) < min_side:
        raise ImageError("too_small", f"{width}x{height} is below the {min_side}px minimum side")
    return image


def inspect(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1) -> ImageInfo:
    """Hash and fully decode the image once, so truncated or corrupt files are caught here."""
    image = open_checked(data, max_pixels, min_side)
    fmt, mode, (width, height) = image.format or "", image.mode, image.size
    _load(image)
    return ImageInfo(hashlib.sha256(data).hexdigest(), width, height, fmt, mode)


def resize_mode(value: str) -> ResizeMode:
    """`value` checked as a resize mode: a saved model's metadata is untyped JSON."""
    if value not in get_args(ResizeMode):
        raise UsageError(f"unknown resize mode {value!r}; a multitag model uses one of {', '.join(get_args(ResizeMode))}")
    return cast(ResizeMode, value)


def decode(
    data: bytes,
    size: int,
    mode: ResizeMode = "stretch",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Bytes -> (size, size, 3) uint8 RGB: EXIF orientation applied, any mode converted.

    JPEGs are decoded in draft mode at no less than twice the target size: libjpeg's DCT
    scaling skips work that the resize would throw away, and the antialiased resize from 2x
    keeps the result visually the same as a full decode.
    """
    image = open_checked(data, max_pixels)
    if image.format == "JPEG":
        image.draft("RGB", (2 * size, 2 * size))
    _load(image)
    image = to_rgb(ImageOps.exif_transpose(image))
    return np.asarray(resize(image, size, mode), dtype=np.uint8)


def decode_file(path: Path | str, size: int, mode: ResizeMode = "stretch", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    return decode(Path(path).read_bytes(), size, mode, max_pixels)


def _load(image: Image.Image) -> None:
    """Decode all pixel data; truncated or corrupt streams raise ImageError('truncated')."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError("truncated", f"decoding failed: {err}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Greyscale, palette, CMYK, 16-bit and alpha images to 8-bit RGB (alpha over white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def resize(image: Image.Image, size: int, mode: ResizeMode) -> Image.Image:
    """Stretch to size x size, or letterbox: keep aspect ratio and pad with black."""
    if mode == "stretch":
        return image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    scale = size / max(image.size)
    inner = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    canvas = Image.new("RGB", (size, size))
    canvas.paste(image.resize(inner, Image.Resampling.BILINEAR), ((size - inner[0]) // 2, (size - inner[1]) // 2))
    return canvas
