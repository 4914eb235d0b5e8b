"""Mask files: the DAVIS palette, palette PNGs, and run-length encoding.

Every part of vosd that reads or writes a mask goes through this module, so that eval outputs,
daemon outputs and user inputs agree on one convention: an index mask is a ``uint8 (H, W)`` array
where 0 is background and ``k`` is object ``k``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


class MaskFileError(ValueError):
    """A mask file that cannot be turned into an index mask."""


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map, ``uint8 (256, 3)``.

    Colour ``k`` spreads the bits of ``k`` over the high bits of R, G and B, so that small labels get
    well-separated colours (1 = dark red, 2 = green, 3 = olive, ...).
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        value, red, green, blue = label, 0, 0, 0
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[label] = (red, green, blue)
    return palette


DAVIS_PALETTE = davis_palette()


def read_index_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as an index mask ``uint8 (H, W)``.

    Accepted: palette PNGs (the index is the label), single-channel images (0 = background; a
    0/255 mask, as in DAVIS 2016, becomes object 1; other values are used as labels), and RGB
    images whose colours come from the DAVIS palette.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskFileError(f"mask file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode == "P":
                return np.asarray(image, dtype=np.uint8).copy()
            if mode in ("1", "L", "I", "I;16", "I;16B", "I;16L"):
                return _grey_to_index(np.asarray(image), path)
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError) as error:  # PIL raises these for unreadable or truncated files
        raise MaskFileError(f"cannot read mask {path}: {error}") from error
    return _rgb_to_index(rgb, path)


def _grey_to_index(values: np.ndarray, path: Path) -> np.ndarray:
    values = values.astype(np.int64)
    labels = np.unique(values)
    if set(labels.tolist()) <= {0, 255} or values.dtype == bool:
        return (values > 0).astype(np.uint8)
    if labels.max() > 255:
        raise MaskFileError(f"mask {path} has label {labels.max()}; at most 255 objects are supported")
    return values.astype(np.uint8)


def _rgb_to_index(rgb: np.ndarray, path: Path) -> np.ndarray:
    """Map DAVIS-palette colours back to labels; any other colour is an error."""
    codes = _colour_codes(rgb.reshape(-1, 3))
    palette_codes = _colour_codes(DAVIS_PALETTE)
    lookup = {int(code): label for label, code in enumerate(palette_codes)}
    unique_codes, inverse = np.unique(codes, return_inverse=True)
    labels = np.empty(len(unique_codes), dtype=np.uint8)
    for i, code in enumerate(unique_codes):
        if int(code) not in lookup:
            colour = tuple(int(c) for c in ((code >> 16) & 255, (code >> 8) & 255, code & 255))
            raise MaskFileError(
                f"mask {path} is an RGB image with colour {colour}, which is not a DAVIS palette colour; "
                "save masks as palette or greyscale PNGs"
            )
        labels[i] = lookup[int(code)]
    return labels[inverse].reshape(rgb.shape[:2])


def _colour_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


def read_palette(path: str | Path) -> np.ndarray | None:
    """The palette of a palette PNG as ``uint8 (256, 3)``, or None for other images."""
    with Image.open(path) as image:
        if image.mode != "P":
            return None
        flat = np.asarray(image.getpalette() or [], dtype=np.uint8)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette.reshape(-1)[: min(len(flat), 768)] = flat[:768]
    return palette


def index_mask_to_image(mask: np.ndarray, palette: np.ndarray | None = None) -> Image.Image:
    """A palette-mode PIL image of an index mask (DAVIS palette by default)."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"index masks are uint8 (H, W); got {mask.dtype} {mask.shape}")
    image = Image.fromarray(mask, mode="P")
    image.putpalette((DAVIS_PALETTE if palette is None else palette).reshape(-1).tolist())
    return image


def write_index_mask(path: str | Path, mask: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write an index mask as a palette PNG."""
    index_mask_to_image(mask, palette).save(path, format="PNG")


def colourise(mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """RGB rendering ``uint8 (H, W, 3)`` of an index mask."""
    return (DAVIS_PALETTE if palette is None else palette)[mask]


def overlay(
    frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5, palette: np.ndarray | None = None
) -> np.ndarray:
    """Blend palette colours over an RGB frame where the mask is non-zero, ``uint8 (H, W, 3)``."""
    if frame.shape[:2] != mask.shape:
        raise ValueError(f"frame {frame.shape[:2]} and mask {mask.shape} differ in size")
    colours = colourise(mask, palette).astype(np.float32)
    blended = frame.astype(np.float32)
    objects = mask > 0
    blended[objects] = (1.0 - alpha) * blended[objects] + alpha * colours[objects]
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def rle_encode(binary: np.ndarray) -> dict:
    """COCO-style uncompressed RLE of a binary mask (column-major runs, starting with a zero run)."""
    flat = np.asarray(binary, dtype=bool).reshape(-1, order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    boundaries = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(boundaries).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(binary.shape[0]), int(binary.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    """Inverse of :func:`rle_encode`: a ``bool (H, W)`` mask."""
    height, width = rle["size"]
    values = np.zeros(height * width, dtype=bool)
    position, on = 0, False
    for count in rle["counts"]:
        if on:
            values[position : position + count] = True
        position += count
        on = not on
    return values.reshape((height, width), order="F")


class FirstMaskError(ValueError):
    """A first-frame mask that cannot start a job; the text says what to change."""


def check_first_mask(
    mask: np.ndarray, source_size: tuple[int, int], max_objects: int, name: str = "first-frame mask"
) -> None:
    """The one check of a first-frame index mask against its video (decoder, worker and `vosd segment` all
    call it): same size as the video, at least one object, at most `max_objects`."""
    width, height = source_size
    if mask.shape != (height, width):
        raise FirstMaskError(
            f"{name} is {mask.shape[1]}x{mask.shape[0]} but the video is {width}x{height}; "
            "the mask must have the size of the video's first frame"
        )
    objects = int(np.count_nonzero(np.bincount(mask.ravel(), minlength=256)[1:]))
    if objects == 0:
        raise FirstMaskError(f"{name} has no object: every pixel is background (0)")
    if objects > max_objects:
        raise FirstMaskError(f"{name} has {objects} objects; this daemon allows at most {max_objects}")

