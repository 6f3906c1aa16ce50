"""Tiny on-disk datasets for the data tests: well-formed ones and a corpus of malformed inputs.

Every image is a real file written by Pillow (the decompression bomb is a real, fully valid
PNG written by hand so that it costs 50 kB instead of 400 MB). Each builder returns the cases
it wrote with the quarantine reason validation must give them (None: the image is valid), so a
test can check every record's fate exactly.
"""

from __future__ import annotations

import functools
import hashlib
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

TINY = 16  # side of ordinary test images: above validate.min_side's default of 8


@dataclass(frozen=True)
class Case:
    """One record of a corpus: where it is, what it is, and the reason it must be quarantined for."""

    image_id: str
    path: str
    expected: str | None  # quarantine reason code; None = must pass validation
    note: str


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def colour_for(name: str) -> tuple[int, int, int]:
    """A colour derived from `name`, so images with different names never share bytes by accident."""
    digest = hashlib.sha256(name.encode()).digest()
    return digest[0], digest[1], digest[2]


def solid(name: str, size: tuple[int, int] = (TINY, TINY), mode: str = "RGB") -> Image.Image:
    """A one-colour image whose colour is unique to `name`."""
    image = Image.new("RGB", size, colour_for(name))
    return image if mode == "RGB" else image.convert(mode)


def encode(image: Image.Image, fmt: str, **save_options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_options)
    return buffer.getvalue()


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def noise(fmt: str, seed: int = 0, size: int = 64) -> bytes:
    """Random pixels: real entropy-coded data, so cutting the file short leaves a valid header."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), fmt)


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


def png16_halves(width: int = 32, height: int = TINY) -> tuple[bytes, tuple[int, int]]:
    """16-bit greyscale PNG: left half 16384, right half 49152 (8-bit 64 and 191 when scaled)."""
    values = np.full((height, width), 16384, dtype=np.uint16)
    values[:, width // 2 :] = 49152
    image = Image.fromarray(values)
    assert image.mode == "I;16", image.mode
    return encode(image, "PNG"), (64, 191)


def rgba_png(name: str) -> bytes:
    """RGBA PNG: left half fully transparent (must become white), right half opaque colour."""
    image = Image.new("RGBA", (TINY, TINY), (*colour_for(name), 255))
    image.paste((0, 0, 0, 0), (0, 0, TINY // 2, TINY))
    return encode(image, "PNG")


def transparent_gif() -> bytes:
    """Palette GIF whose index 0 is transparent: left half transparent, right half red."""
    image = Image.new("P", (TINY, TINY), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.paste(1, (TINY // 2, 0, TINY, TINY))
    return encode(image, "GIF", transparency=0)


def cmyk_red_jpeg() -> bytes:
    return encode(Image.new("RGB", (TINY, TINY), (255, 0, 0)).convert("CMYK"), "JPEG", quality=95)


def exif_rotated_jpeg(width: int = 40, height: int = 20) -> bytes:
    """Stored landscape, left half red and right half blue, with EXIF orientation 6 (rotate 90
    clockwise to display): decoded correctly it is portrait, red on top and blue below."""
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


@functools.cache
def bomb_png(side: int = 20_000) -> bytes:
    """A complete, valid 1-bit PNG of side x side (400 Mpx) that weighs about 50 kB."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed pixels
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------
# Dataset layouts
# --------------------------------------------------------------------------------------------


def voc_xml(filename: str, objects: list[tuple[str, int]]) -> str:
    """A VOC annotation with one <object> per (class name, difficult flag)."""
    body = "".join(
        f"<object><name>{escape(name)}</name><difficult>{difficult}</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object>"
        for name, difficult in objects
    )
    return f"<annotation><filename>{escape(filename)}</filename><size><width>16</width><height>16</height><depth>3</depth></size>{body}</annotation>"


def write_voc(root: Path, items: dict[str, tuple[bytes | None, str | None]], splits: dict[str, list[str]]) -> Path:
    """VOC year folder: items maps id -> (image bytes or None, annotation XML text or None)."""
    for image_id, (image, xml) in items.items():
        if image is not None:
            write_bytes(root / "JPEGImages" / f"{image_id}.jpg", image)
        if xml is not None:
            write_bytes(root / "Annotations" / f"{image_id}.xml", xml.encode())
    for split, ids in splits.items():
        write_bytes(root / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{i}\n" for i in ids).encode())
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    return root


def write_csv(root: Path, rows: list[bytes], classes: list[str] | None = None, header: bytes = b"filename,labels,split") -> Path:
    """labels.csv from raw byte rows (so a test can write a row that is not UTF-8)."""
    write_bytes(root / "labels.csv", b"\n".join([header, *rows]) + b"\n")
    if classes is not None:
        write_bytes(root / "classes.txt", "".join(f"{c}\n" for c in classes).encode())
    return root


def csv_row(filename: str, labels: list[str], split: str = "") -> bytes:
    return f"{filename},{'|'.join(labels)},{split}".encode()


# --------------------------------------------------------------------------------------------
# The malformed-input corpus
# --------------------------------------------------------------------------------------------

VOC_SPLITS = {
    "train": ["ok_train", "a_dup_train", "listed_without_xml", "truncated_jpeg", "rgba_png"],
    "val": ["ok_val", "png16", "cmyk_jpeg"],
    "test": ["ok_test", "z_dup_test"],
}


def build_voc_corpus(root: Path) -> list[Case]:
    """A VOC dataset holding every VOC-specific kind of bad input next to valid odd formats."""
    labelled = voc_xml("x.jpg", [("cat", 0)])
    dup = encode(solid("duplicate"), "PNG")
    spec: dict[str, tuple[bytes | None, str | None, str | None, str]] = {
        # id: (image bytes, xml, expected reason, what it is)
        "ok_train": (encode(solid("ok_train"), "JPEG"), voc_xml("x", [("cat", 0), ("dog", 0)]), None, "ordinary JPEG"),
        "ok_val": (encode(solid("ok_val"), "JPEG"), voc_xml("x", [("dog", 0)]), None, "ordinary JPEG"),
        "ok_test": (encode(solid("ok_test"), "JPEG"), voc_xml("x", [("person", 0)]), None, "ordinary JPEG"),
        "ok_unsplit": (encode(solid("ok_unsplit"), "JPEG"), labelled, None, "JPEG in no ImageSets list"),
        "rgba_png": (rgba_png("rgba_png"), labelled, None, "PNG with alpha under a .jpg name"),
        "png16": (png16_halves()[0], labelled, None, "16-bit greyscale PNG"),
        "cmyk_jpeg": (cmyk_red_jpeg(), labelled, None, "CMYK JPEG"),
        "exif_rotated": (exif_rotated_jpeg(), labelled, None, "JPEG with EXIF orientation 6"),
        "gif_transparent": (transparent_gif(), labelled, None, "palette GIF with a transparent index"),
        "grey_jpeg": (encode(solid("grey_jpeg", mode="L"), "JPEG"), labelled, None, "greyscale JPEG"),
        "z_dup_test": (dup, labelled, None, "test copy of an image also in train: kept"),
        "a_dup_train": (dup, labelled, "duplicate_content_across_splits", "train copy of a test image"),
        "truncated_jpeg": (truncated(noise("JPEG")), labelled, "truncated", "JPEG cut in its scan data"),
        "zero_byte": (b"", labelled, "empty_file", "zero-byte .jpg"),
        "text_as_jpg": (b"this is not an image, just text\n", labelled, "not_an_image", "text file named .jpg"),
        "bomb": (bomb_png(), labelled, "decompression_bomb", "20000x20000 PNG (50 kB)"),
        "tiny": (encode(solid("tiny", (4, 6)), "PNG"), labelled, "too_small", "4x6 image, min_side 8"),
        "unknown_class": (
            encode(solid("unknown_class"), "JPEG"),
            voc_xml("x", [("cat", 0), ("unicorn", 0)]),
            "unknown_class",
            "object class not in the VOC list",
        ),
        "wrong_case": (encode(solid("wrong_case"), "JPEG"), voc_xml("x", [("Dog", 0)]), "unknown_class", "class name in the wrong case"),
        "no_objects": (encode(solid("no_objects"), "JPEG"), voc_xml("x", []), "no_labels", "annotation without objects"),
        "malformed_xml": (
            encode(solid("malformed_xml"), "JPEG"),
            "<annotation><object><name>cat</name></annotation",
            "bad_annotation",
            "XML that does not parse",
        ),
        "missing_image": (None, labelled, "missing_file", "annotation whose JPEG is absent"),
        "listed_without_xml": (encode(solid("listed_without_xml"), "JPEG"), None, "missing_annotation", "id in ImageSets without an XML"),
    }
    write_voc(root, {i: (image, xml) for i, (image, xml, _, _) in spec.items()}, VOC_SPLITS)
    return [Case(i, str(root / "JPEGImages" / f"{i}.jpg"), expected, note) for i, (_, _, expected, note) in spec.items()]


CSV_CLASSES = ["cat", "dog", "person"]
NOT_UTF8_ROW = "caf\xe9.png,cat,train".encode("latin-1")


def build_csv_corpus(root: Path) -> list[Case]:
    """A folder+CSV dataset holding the CSV-specific bad inputs and more valid odd formats."""
    same = encode(solid("same_content"), "PNG")
    # (filename, bytes to write or None, CSV row, expected reason, what it is)
    entries: list[tuple[str, bytes | None, bytes, str | None, str]] = [
        ("rgba.png", rgba_png("rgba.png"), csv_row("rgba.png", ["cat"], "train"), None, "PNG with alpha"),
        ("bilevel.png", encode(solid("bilevel", mode="1"), "PNG"), csv_row("bilevel.png", ["dog"], "train"), None, "1-bit PNG"),
        (
            "grey_alpha.png",
            encode(solid("grey_alpha", mode="LA"), "PNG"),
            csv_row("grey_alpha.png", ["person"], "val"),
            None,
            "greyscale + alpha PNG",
        ),
        ("palette.png", encode(solid("palette", mode="P"), "PNG"), csv_row("palette.png", ["cat", "dog"]), None, "palette PNG"),
        ("bitmap.bmp", encode(solid("bmp"), "BMP"), csv_row("bitmap.bmp", ["dog"], "test"), None, "BMP"),
        ("lossless.webp", encode(solid("webp"), "WEBP", lossless=True), csv_row("lossless.webp", ["cat"]), None, "WebP"),
        (
            "deep.tiff",
            encode(Image.fromarray(np.full((TINY, TINY), 40000, np.uint16)), "TIFF"),
            csv_row("deep.tiff", ["person"], "train"),
            None,
            "16-bit TIFF",
        ),
        (
            "png_inside.jpg",
            encode(solid("png_inside"), "PNG"),
            csv_row("png_inside.jpg", ["dog", "person"], "val"),
            None,
            "PNG bytes under a .jpg name",
        ),
        (
            "dupid.png",
            encode(solid("dupid_first"), "PNG"),
            csv_row("dupid.png", ["cat"], "train"),
            None,
            "first of two rows with id 'dupid'",
        ),
        (
            "sub/dupid.jpg",
            encode(solid("dupid_second"), "JPEG"),
            csv_row("sub/dupid.jpg", ["dog"], "train"),
            "duplicate_id",
            "second row with id 'dupid'",
        ),
        ("same_a.png", same, csv_row("same_a.png", ["cat"], "train"), None, "first of two identical files"),
        ("same_b.png", same, csv_row("same_b.png", ["cat"], "train"), "duplicate_content", "byte copy of same_a.png, same split"),
        ("caf\xe9.png", encode(solid("cafe"), "PNG"), NOT_UTF8_ROW, "bad_csv_row", "row that is not UTF-8 (latin-1)"),
        ("holdout.png", encode(solid("holdout"), "PNG"), csv_row("holdout.png", ["cat"], "holdout"), "unknown_split", "split 'holdout'"),
        ("lonely.png", encode(solid("lonely"), "PNG"), b"lonely.png", "bad_csv_row", "row without a labels column"),
        ("a_folder", None, csv_row("a_folder", ["cat"]), "unreadable_file", "row naming a directory"),
        (
            "unicorn.png",
            encode(solid("unicorn"), "PNG"),
            csv_row("unicorn.png", ["cat", "unicorn"]),
            "unknown_class",
            "label not in classes.txt",
        ),
        ("nolabels.png", encode(solid("nolabels"), "PNG"), csv_row("nolabels.png", []), "no_labels", "empty labels field"),
        ("gone.png", None, csv_row("gone.png", ["dog"], "train"), "missing_file", "row whose file does not exist"),
        ("cut.png", truncated(noise("PNG", seed=1, size=48)), csv_row("cut.png", ["dog"]), "truncated", "PNG cut short"),
    ]
    (root / "a_folder").mkdir(parents=True, exist_ok=True)
    cases = []
    for line, (filename, data, row, expected, note) in enumerate(entries, start=2):  # line 1: header
        if data is not None:
            write_bytes(root / filename, data)
        image_id = f"row{line}" if expected == "bad_csv_row" else Path(filename).stem
        # the reader records a non-UTF-8 row under its first field decoded with replacement
        path = root / row.split(b",")[0].decode("utf-8", errors="replace")
        cases.append(Case(image_id, str(path), expected, note))
    write_csv(root, [row for _, _, row, _, _ in entries], CSV_CLASSES)
    return cases
