"""A picture of where a checkpoint fails: chosen frames of a DAVIS sequence side by side, the prediction
tinted blue, the annotation's outline green, each tile labelled with its frame number and IoU.

    python benchmarks/failure_strip.py --sequence car-roundabout --frames 10,40,70 \\
        [--checkpoint PATH] [--size 480] [--width 320] --output docs/images/lite-car-roundabout.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from heldout import DEFAULT_ROOT, sequence_files, single_object  # benchmarks/ is on sys.path when run
from PIL import Image, ImageDraw
from scipy import ndimage

from workers.evaluation.runner import read_frame
from workers.training.weights import default_model_path
from workers.xmem.checkpoint import load_network
from workers.xmem.config import InferenceConfig
from workers.xmem.session import VideoSession


def tile(frame: np.ndarray, predicted: np.ndarray, truth: np.ndarray, label: str, width: int) -> Image.Image:
    """The frame, prediction tinted blue, the annotation's outline green, scaled to ``width``."""
    image = frame.astype(np.float32)
    blue = np.array([0.0, 60.0, 255.0])
    image[predicted > 0] = 0.4 * image[predicted > 0] + 0.6 * blue
    outline = truth.astype(bool) & ~ndimage.binary_erosion(truth.astype(bool), iterations=2)
    image[outline] = (0, 255, 0)
    picture = Image.fromarray(image.astype(np.uint8))
    picture = picture.resize((width, round(picture.height * width / picture.width)), Image.BILINEAR)
    draw = ImageDraw.Draw(picture)
    draw.rectangle(draw.textbbox((4, 4), label), fill=(0, 0, 0))
    draw.text((4, 4), label, fill=(255, 255, 255))
    return picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--sequence", required=True)
    parser.add_argument("--frames", required=True, help="comma-separated frame indices to show")
    parser.add_argument("--checkpoint", type=Path, help="XMem checkpoint (default: the bundled model)")
    parser.add_argument("--size", type=int, default=480, help="working size")
    parser.add_argument("--width", type=int, default=320, help="width of each tile in pixels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shown = sorted({int(index) for index in args.frames.split(",")})
    network = load_network(args.checkpoint or default_model_path())
    frame_paths, mask_paths = sequence_files(args.root, args.sequence)
    session = VideoSession(network, InferenceConfig(), size=args.size)
    first = single_object(mask_paths[0])
    tiles = []
    for index, path in enumerate(frame_paths[:max(shown) + 1]):
        frame = read_frame(path)
        result = session.step(frame, first if index == 0 else None)
        if index in shown:
            truth = single_object(mask_paths[index])
            union = np.count_nonzero((result.index_mask > 0) | (truth > 0))
            iou = np.count_nonzero((result.index_mask > 0) & (truth > 0)) / max(union, 1)
            tiles.append(tile(frame, result.index_mask, truth, f"{args.sequence} {index}: IoU {iou:.2f}",
                              args.width))
    strip = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)))
    left = 0
    for picture in tiles:
        strip.paste(picture, (left, 0))
        left += picture.width
    args.output.parent.mkdir(parents=True, exist_ok=True)
    strip.save(args.output)
    print(args.output)


if __name__ == "__main__":
    main()
