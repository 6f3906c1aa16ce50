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
from typing import BinaryIO, cast, get_args

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from multitag.config import ResizeMode
from multitag.errors import MultitagError, Problem, UsageError

DEFAULT_MAX_PIXELS = 80_000_000
# What Pillow holds per pixel once an image of each mode is decoded (RGB is stored as 4 bytes).
STORED_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
INSPECT_DRAFT_SIDE = 2048
LUT_16_TO_8 = (np.arange(65536, dtype=np.float64) * (255.0 / 65535.0)).astype(np.uint8)  # 16-bit grey -> 8-bit, one table

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


def decoded_bytes(image: Image.Image) -> int:
    """The memory Pillow will hold for the decoded pixels (at the size a JPEG draft set)."""
    return image.width * image.height * STORED_BYTES_PER_PIXEL.get(image.mode, 4)


def check_decoded_size(image: Image.Image, max_bytes: int | None) -> None:
    """Refuse, before decoding, an image whose pixels would need more than `max_bytes` (None: no cap);
    the pixel cap alone lets a small 16-bit PNG or a huge-canvas PNG cost gigabytes across requests."""
    if max_bytes is None:
        return
    needed = decoded_bytes(image)
    if needed > max_bytes:
        raise ImageError(
            "too_large_to_decode",
            f"{image.width}x{image.height} {image.mode} needs {needed / 1e6:,.0f} MB decoded; this server decodes at most "
            f"{max_bytes / 1e6:,.0f} MB per image (serve.max_decode_mb): send a JPEG or a smaller image",
        )


def inspect(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1, max_bytes: int | None = None) -> ImageInfo:
    """Hash and fully decode the image once, so truncated or corrupt files are caught here. With
    `max_bytes` (serving) a JPEG is decoded at a reduced scale (the whole stream is still read, so
    truncation is still caught) and anything needing more memory is refused."""
    image = open_checked(data, max_pixels, min_side)
    fmt, mode, (width, height) = image.format or "", image.mode, image.size
    if max_bytes is not None and image.format == "JPEG":
        image.draft(image.mode, (INSPECT_DRAFT_SIDE, INSPECT_DRAFT_SIDE))
    check_decoded_size(image, max_bytes)
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
    max_bytes: int | None = None,
) -> np.ndarray:
    """Bytes -> (size, size, 3) uint8 RGB: EXIF orientation applied, any mode converted.

    JPEGs are decoded in draft mode at no less than twice the target size: libjpeg's DCT
    scaling skips work that the resize would throw away, and the antialiased resize from 2x
    keeps the result visually the same as a full decode. `max_bytes` (serving) refuses an image
    whose decoded pixels would need more memory (check_decoded_size).
    """
    image = open_checked(data, max_pixels)
    if image.format == "JPEG":
        image.draft("RGB", (2 * size, 2 * size))
    check_decoded_size(image, max_bytes)
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
    """Greyscale, palette, CMYK, 16-bit and alpha images to 8-bit RGB (alpha over white).

    High bit depths go to 8 bits without a float64 copy: 16-bit grey through one lookup table, 32-bit
    integer or float grey scaled in place in float32 (a 16-bit bomb once cost 8 bytes a pixel here)."""
    if image.mode.startswith("I;16"):
        image = Image.fromarray(LUT_16_TO_8[np.asarray(image).astype(np.uint16, copy=False)], "L")
    elif image.mode in ("I", "F"):
        array = np.array(image, dtype=np.float32)
        array *= 255.0 / (65535.0 if array.max() > 255 else 255.0)
        image = Image.fromarray(np.clip(array, 0, 255, out=array).astype(np.uint8), "L")
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


MIN_HASH_BITS = 8  # fewer set (or unset) bits than this: a flat image, whose hash names no photo


def difference_hash(path: Path | BinaryIO) -> int:
    """A 64-bit dHash of the image: resized, recompressed or slightly edited copies of one photo
    differ in a few bits, different photos in about half of them. A JPEG is read at a reduced
    scale first (draft): the hash needs 9 x 8 pixels."""
    with Image.open(path) as image:
        image.draft("L", (64, 64))
        pixels = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).ravel()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hash_distance(a: int, b: int) -> int:
    """How many of two difference hashes' 64 bits differ."""
    return (a ^ b).bit_count()


def informative_hash(value: int) -> bool:
    """Whether a difference hash tells photos apart: a flat image (a solid colour, a blank scan)
    has almost no gradients, so its hash is near 0 and near every other flat image's."""
    return MIN_HASH_BITS <= value.bit_count() <= 64 - MIN_HASH_BITS
