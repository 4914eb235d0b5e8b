"""Procedural synthetic video: textured objects moving over textured backgrounds, with occlusion.

Stands in for BL30K (rendered Blender video) in stage 1: unlimited clips with exact masks, several objects,
independent affine motion, camera panning and objects passing in front of each other. Everything is drawn
with numpy / OpenCV from a ``numpy.random.Generator``, so a seed reproduces a clip exactly.

Objects are composited back to front with hard alpha, so the index mask of a frame is exactly "the front-most
object covering the pixel" and the image shows that object's texture there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of generated clips.

    Attributes:
        height: frame height in pixels.
        width: frame width in pixels.
        min_objects: fewest objects per clip.
        max_objects: most objects per clip.
        object_size: range of an object's sprite side as a fraction of the shorter frame side.
        max_speed: largest object speed per frame, as a fraction of the shorter frame side.
        max_spin: largest rotation per frame in degrees.
        max_zoom: largest relative size change per frame (objects approach or recede).
        camera_speed: largest camera pan per frame, as a fraction of the shorter frame side.
    """

    height: int = 480
    width: int = 480
    min_objects: int = 1
    max_objects: int = 4
    object_size: tuple[float, float] = (0.2, 0.5)
    max_speed: float = 0.03
    max_spin: float = 4.0
    max_zoom: float = 0.02
    camera_speed: float = 0.01


@dataclass(frozen=True)
class ObjectLayer:
    """One object of a clip, rendered into frame coordinates.

    Attributes:
        label: the object's index in the masks (1..K).
        colour: (T, H, W, 3) uint8, the object's texture where it covers the frame (undefined elsewhere).
        alpha: (T, H, W) bool, where the object covers the frame if nothing occluded it.
    """

    label: int
    colour: np.ndarray
    alpha: np.ndarray


@dataclass(frozen=True)
class SyntheticClip:
    """A generated clip.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        masks: (T, H, W) uint8 index masks, 0 = background.
        layers: the objects in drawing order, back to front (later layers occlude earlier ones).
    """

    frames: np.ndarray
    masks: np.ndarray
    layers: tuple[ObjectLayer, ...]

    @property
    def depth_order(self) -> tuple[int, ...]:
        """Labels from back to front."""
        return tuple(layer.label for layer in self.layers)


def smooth_noise(
    rng: np.random.Generator, height: int, width: int, cells: int, channels: int = 1
) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid of ``cells`` per side interpolated bicubically."""
    grid = rng.random((cells + 1, cells + 1, channels)).astype(np.float32)
    noise = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(noise.reshape(height, width, channels), 0.0, 1.0)


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A fairly saturated RGB colour, float32 in [0, 255] (near-grey objects vanish into backgrounds)."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(90, 256), rng.integers(70, 256)]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def render_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A procedural texture (uint8 RGB): two colours mixed by smooth noise, plus stripes, checks or dots."""
    first, second = random_colour(rng), random_colour(rng)
    mix = smooth_noise(rng, height, width, cells=int(rng.integers(2, 8)))
    texture = first * mix + second * (1.0 - mix)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(0, 4)
    period = float(rng.uniform(6, 24))
    if kind == 1:
        angle = rng.uniform(0, math.pi)
        stripes = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period) > 0
        texture[stripes] *= 0.6
    elif kind == 2:
        checks = ((xs // period).astype(int) + (ys // period).astype(int)) % 2 == 0
        texture[checks] = texture[checks] * 0.5 + random_colour(rng) * 0.5
    elif kind == 3:
        dots = (np.sin(xs * 2 * math.pi / period) * np.sin(ys * 2 * math.pi / period)) > 0.6
        texture[dots] = random_colour(rng)
    texture += (rng.standard_normal((height, width, 1)) * 6).astype(np.float32)
    return np.clip(texture, 0, 255).astype(np.uint8)


def render_shape(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random filled shape in a ``size`` x ``size`` bool sprite: ellipse, star polygon or noise blob."""
    canvas = np.zeros((size, size), np.uint8)
    centre = (size - 1) / 2
    kind = rng.integers(0, 3)
    if kind == 0:
        axes = (int(size * rng.uniform(0.25, 0.48)), int(size * rng.uniform(0.2, 0.48)))
        cv2.ellipse(canvas, (size // 2, size // 2), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 1:
        corners = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * math.pi, corners))
        radii = size * rng.uniform(0.2, 0.48, corners)
        points = np.stack([centre + radii * np.cos(angles), centre + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    else:
        blob = smooth_noise(rng, size, size, cells=3)[..., 0]
        ys, xs = np.mgrid[0:size, 0:size]
        falloff = 1.0 - np.hypot(ys - centre, xs - centre) / (size / 2)
        canvas[(blob * 0.6 + falloff * 0.7) > 0.65] = 1
    if canvas.sum() < size:  # degenerate draw: fall back to a disc
        cv2.circle(canvas, (size // 2, size // 2), size // 3, 1, -1)
    return canvas.astype(bool)


def object_trajectory(
    rng: np.random.Generator, config: SyntheticConfig, sprite_size: int, num_frames: int
) -> np.ndarray:
    """(T, 2, 3) affine maps from sprite to frame coordinates for one object.

    The object starts with its centre inside the middle 70 % of the frame (so the first frame shows it) and
    then moves with constant velocity, spin and zoom rate.
    """
    side = min(config.height, config.width)
    start = np.array([rng.uniform(0.15, 0.85) * config.width, rng.uniform(0.15, 0.85) * config.height])
    velocity = rng.uniform(-config.max_speed, config.max_speed, size=2) * side
    angle0 = rng.uniform(0, 360)
    spin = rng.uniform(-config.max_spin, config.max_spin)
    zoom_rate = rng.uniform(-config.max_zoom, config.max_zoom)
    sprite_centre = (sprite_size - 1) / 2
    maps = []
    for t in range(num_frames):
        theta = math.radians(angle0 + spin * t)
        zoom = (1.0 + zoom_rate) ** t
        linear = zoom * np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        centre = start + velocity * t
        offset = centre - linear @ np.array([sprite_centre, sprite_centre])
        maps.append(np.hstack([linear, offset[:, None]]))
    return np.stack(maps)


def render_layer(
    colour: np.ndarray, alpha: np.ndarray, maps: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Warp a sprite (colour, alpha) into every frame: (T, H, W, 3) colour and (T, H, W) bool coverage."""
    colours, alphas = [], []
    alpha_u8 = alpha.astype(np.uint8)
    for matrix in maps:
        colours.append(cv2.warpAffine(colour, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_REPLICATE))
        alphas.append(cv2.warpAffine(alpha_u8, matrix, (width, height), flags=cv2.INTER_NEAREST,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0)
    return np.stack(colours), np.stack(alphas)


def render_background(rng: np.random.Generator, config: SyntheticConfig, num_frames: int) -> np.ndarray:
    """(T, H, W, 3) background: a large texture seen through a window that pans like a moving camera."""
    side = min(config.height, config.width)
    travel = config.camera_speed * side * max(num_frames - 1, 1)
    margin = math.ceil(travel) + 1
    texture = render_texture(rng, config.height + 2 * margin, config.width + 2 * margin)
    shade = smooth_noise(rng, texture.shape[0], texture.shape[1], cells=2) * 0.5 + 0.75
    texture = np.clip(texture.astype(np.float32) * shade, 0, 255).astype(np.uint8)
    velocity = rng.uniform(-config.camera_speed, config.camera_speed, size=2) * side
    frames = []
    for t in range(num_frames):
        dx, dy = velocity * t
        matrix = np.array([[1.0, 0.0, -margin - dx], [0.0, 1.0, -margin - dy]])
        frames.append(cv2.warpAffine(texture, matrix, (config.width, config.height), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)


def composite(background: np.ndarray, layers: tuple[ObjectLayer, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Paint layers back to front over the background: (frames (T,H,W,3) uint8, index masks (T,H,W) uint8)."""
    frames = background.copy()
    masks = np.zeros(background.shape[:3], np.uint8)
    for layer in layers:
        frames[layer.alpha] = layer.colour[layer.alpha]
        masks[layer.alpha] = layer.label
    return frames, masks


def generate_clip(config: SyntheticConfig, num_frames: int, rng: np.random.Generator) -> SyntheticClip:
    """Render one clip of ``num_frames`` frames with between min_objects and max_objects objects.

    Labels are assigned in random order relative to depth, so label number says nothing about who is in front.
    """
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    labels = rng.permutation(np.arange(1, count + 1))
    side = min(config.height, config.width)
    background = render_background(rng, config, num_frames)
    layers = []
    for label in labels:
        sprite_size = max(8, int(side * rng.uniform(*config.object_size)))
        shape = render_shape(rng, sprite_size)
        texture = render_texture(rng, sprite_size, sprite_size)
        maps = object_trajectory(rng, config, sprite_size, num_frames)
        colour, alpha = render_layer(texture, shape, maps, config.height, config.width)
        layers.append(ObjectLayer(label=int(label), colour=colour, alpha=alpha))
    frames, masks = composite(background, tuple(layers))
    return SyntheticClip(frames=frames, masks=masks, layers=tuple(layers))
