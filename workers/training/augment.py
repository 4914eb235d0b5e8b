"""Joint image / index-mask augmentation on numpy arrays (OpenCV), shared by every training source.

Images are ``uint8 (H, W, 3)`` RGB, masks ``uint8 (H, W)`` index masks. Every geometric operation applies one
mapping to both, bilinear for the image and nearest for the mask, so labels never blend and never drift from
the pixels they describe. Randomness comes only from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from workers.imagenet import IMAGENET_MEAN, IMAGENET_STD

FILL_COLOUR = tuple(round(255 * m) for m in IMAGENET_MEAN)
"""Border colour of warped images: the normalisation mean, so borders become zeros after normalising."""


@dataclass(frozen=True)
class Jitter:
    """Colour jitter strengths: each factor is drawn from [1 - s, 1 + s] (hue: a shift of [-s, s] turns).

    Attributes:
        brightness: scales all channels.
        contrast: blends towards the mean grey level.
        saturation: blends towards the grey image.
        hue: rotates the hue by up to this fraction of a full turn.
    """

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0


@dataclass(frozen=True)
class ClipAugmentation:
    """How a sampled clip is augmented (XMem's video settings by default).

    Attributes:
        crop_size: side of the square output crop.
        crop_scale: range of the crop's area as a fraction of the source frame (random resized crop).
        crop_ratio: range of the crop's aspect ratio before resizing to a square.
        flip_prob: chance of a horizontal flip (one decision per clip).
        clip_jitter: colour jitter shared by all frames of a clip.
        frame_jitter: small extra colour jitter drawn per frame.
        grayscale_prob: chance that the whole clip is turned grey.
        frame_degrees: per-frame random rotation range in degrees (0 in fine-tuning and for synthetic video).
        frame_shear: per-frame random shear range in degrees.
    """

    crop_size: int = 384
    crop_scale: tuple[float, float] = (0.36, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    clip_jitter: Jitter = Jitter(0.1, 0.03, 0.03, 0.0)
    frame_jitter: Jitter = Jitter(0.01, 0.01, 0.01, 0.0)
    grayscale_prob: float = 0.05
    frame_degrees: float = 15.0
    frame_shear: float = 10.0


@dataclass(frozen=True)
class StaticDeformation:
    """How one still image becomes a short clip: each frame is an independent random deformation of it.

    Attributes:
        degrees: rotation range (degrees) of the per-frame affine transform.
        shear: shear range (degrees).
        scale: range of the per-frame zoom.
        translate: largest shift as a fraction of the image side.
        warp_strength: largest displacement of the smooth (thin-plate-like) warp, as a fraction of the side.
        warp_grid: control points per side of the smooth warp (a coarse grid of random offsets, interpolated).
    """

    degrees: float = 20.0
    shear: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    warp_strength: float = 0.04
    warp_grid: int = 4


XMEM_CROP_SIZE = 384
"""XMem's crop side on 480p video; its crop_scale makes objects appear at 0.8-1.3x their 480p size."""


def video_augmentation(crop_size: int) -> ClipAugmentation:
    """XMem's video augmentation at any crop side, keeping XMem's object scale on 480p frames.

    A smaller crop covers a proportionally smaller window, (crop / 384)^2 of XMem's area range, so a model
    trained on 192-pixel crops sees objects at the scale it meets at inference on 480p video instead of at
    half that scale (which is what the plain crop range would give).
    """
    factor = min(1.0, (crop_size / XMEM_CROP_SIZE) ** 2)
    low, high = ClipAugmentation.crop_scale
    return ClipAugmentation(crop_size=crop_size, crop_scale=(low * factor, high * factor))


def crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A random (top, left, crop height, crop width) covering ``scale`` of the area with aspect in ``ratio``.

    Falls back to the largest centred crop of admissible aspect after ten unlucky draws.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = round(math.sqrt(target * aspect))
        crop_h = round(math.sqrt(target / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            return top, int(rng.integers(0, width - crop_w + 1)), crop_h, crop_w
    aspect = min(max(width / height, ratio[0]), ratio[1])
    crop_w = min(width, round(height * aspect))
    crop_h = min(height, round(crop_w / aspect))
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def crop_resize(
    image: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``box`` out of both and resize to ``size`` squared (area/bilinear image, nearest mask)."""
    top, left, crop_h, crop_w = box
    image = image[top:top + crop_h, left:left + crop_w]
    mask = mask[top:top + crop_h, left:left + crop_w]
    shrinking = crop_h > size and crop_w > size
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return image, mask


def random_affine(
    height: int, width: int, rng: np.random.Generator, *, degrees: float, shear: float,
    scale: tuple[float, float] = (1.0, 1.0), translate: float = 0.0,
) -> np.ndarray:
    """A random 2x3 affine matrix about the image centre (rotation, shear, zoom, shift)."""
    angle = math.radians(rng.uniform(-degrees, degrees))
    shear_x = math.radians(rng.uniform(-shear, shear))
    zoom = rng.uniform(*scale)
    shift = rng.uniform(-translate, translate, size=2) * np.array([width, height])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    linear = zoom * rotation @ np.array([[1.0, math.tan(shear_x)], [0.0, 1.0]])
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    offset = centre + shift - linear @ centre
    return np.hstack([linear, offset[:, None]]).astype(np.float64)


def warp_affine(image: np.ndarray, mask: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply one affine map to both; uncovered image pixels get the mean colour, uncovered mask pixels 0."""
    height, width = mask.shape
    image = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=FILL_COLOUR)
    mask = cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return image, mask


def smooth_warp_maps(
    height: int, width: int, rng: np.random.Generator, *, strength: float, grid: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sampling maps of a smooth random deformation (a thin-plate-like elastic warp).

    Random offsets on a coarse ``grid`` x ``grid`` lattice are interpolated bicubically to every pixel, so the
    field bends shapes without tearing them.
    """
    amplitude = strength * min(height, width)
    offsets = rng.uniform(-amplitude, amplitude, size=(2, grid, grid)).astype(np.float32)
    dx = cv2.resize(offsets[0], (width, height), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(offsets[1], (width, height), interpolation=cv2.INTER_CUBIC)
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return xs + dx, ys + dy


def remap(
    image: np.ndarray, mask: np.ndarray, maps: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Resample both through the same sampling maps (bilinear image, nearest mask)."""
    map_x, map_y = maps
    image = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                      borderValue=FILL_COLOUR)
    mask = cv2.remap(mask, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return image, mask


def draw_jitter(jitter: Jitter, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Concrete (brightness, contrast, saturation, hue shift) factors for one application."""
    return (
        rng.uniform(1 - jitter.brightness, 1 + jitter.brightness),
        rng.uniform(1 - jitter.contrast, 1 + jitter.contrast),
        rng.uniform(1 - jitter.saturation, 1 + jitter.saturation),
        rng.uniform(-jitter.hue, jitter.hue),
    )


def apply_jitter(image: np.ndarray, factors: tuple[float, float, float, float]) -> np.ndarray:
    """Colour-jitter an RGB uint8 image with fixed factors (so one draw can be shared by all frames)."""
    brightness, contrast, saturation, hue = factors
    result = image.astype(np.float32) * brightness
    grey = result @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    result = (result - grey.mean()) * contrast + grey.mean()
    grey = (result @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    result = np.clip((result - grey) * saturation + grey, 0, 255).astype(np.uint8)
    if hue:
        hsv = cv2.cvtColor(result, cv2.COLOR_RGB2HSV_FULL)
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(hue * 256)) % 256
        result = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    return result


def to_grey(image: np.ndarray) -> np.ndarray:
    """Three identical grey channels."""
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def augment_clip(
    frames: list[np.ndarray], masks: list[np.ndarray], params: ClipAugmentation, rng: np.random.Generator, *,
    per_frame_affine: bool = True,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Augment a video clip: one crop / flip / colour draw for the clip, small independent changes per frame.

    The shared draws keep the clip a plausible video; the per-frame affine and jitter make consecutive frames
    differ more than real motion does, which is how XMem makes memory matching work harder.
    """
    height, width = masks[0].shape
    box = crop_box(height, width, params.crop_scale, params.crop_ratio, rng)
    flip = rng.random() < params.flip_prob
    clip_factors = draw_jitter(params.clip_jitter, rng)
    grey = rng.random() < params.grayscale_prob
    out_frames, out_masks = [], []
    for image, mask in zip(frames, masks, strict=True):
        image, mask = crop_resize(image, mask, box, params.crop_size)
        if flip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        image = apply_jitter(np.ascontiguousarray(image), clip_factors)
        mask = np.ascontiguousarray(mask)
        if per_frame_affine and (params.frame_degrees or params.frame_shear):
            matrix = random_affine(params.crop_size, params.crop_size, rng, degrees=params.frame_degrees,
                                   shear=params.frame_shear)
            image, mask = warp_affine(image, mask, matrix)
        image = apply_jitter(image, draw_jitter(params.frame_jitter, rng))
        out_frames.append(to_grey(image) if grey else image)
        out_masks.append(mask)
    return out_frames, out_masks


def deform_still(
    image: np.ndarray, mask: np.ndarray, num_frames: int, deformation: StaticDeformation,
    params: ClipAugmentation, rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Turn one image + mask into a clip: per frame a random affine, a smooth warp, a crop and colour jitter.

    Frames are independent deformations of the same still, so the network has to match appearance across
    changes of pose and shape (stage 0 of XMem).
    """
    height, width = mask.shape
    frames, masks = [], []
    for _ in range(num_frames):
        matrix = random_affine(height, width, rng, degrees=deformation.degrees, shear=deformation.shear,
                               scale=deformation.scale, translate=deformation.translate)
        frame, frame_mask = warp_affine(image, mask, matrix)
        maps = smooth_warp_maps(height, width, rng, strength=deformation.warp_strength,
                                grid=deformation.warp_grid)
        frame, frame_mask = remap(frame, frame_mask, maps)
        box = crop_box(height, width, params.crop_scale, params.crop_ratio, rng)
        frame, frame_mask = crop_resize(frame, frame_mask, box, params.crop_size)
        if rng.random() < params.flip_prob:
            frame = np.ascontiguousarray(frame[:, ::-1])
            frame_mask = np.ascontiguousarray(frame_mask[:, ::-1])
        frames.append(apply_jitter(frame, draw_jitter(params.clip_jitter, rng)))
        masks.append(frame_mask)
    return frames, masks


def to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    """uint8 RGB frames -> float (T, 3, H, W) normalised with the ImageNet mean and std (as at inference)."""
    stacked = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (stacked - mean) / std
