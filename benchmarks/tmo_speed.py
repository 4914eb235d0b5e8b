"""Print TMO's CPU/GPU time per frame at DAVIS 480p (854x480) per variant, and DIS flow time per frame.

Random calibrated weights (speed does not depend on them); lite runs at its default input size unless
--lite-size is given:
    python benchmarks/tmo_speed.py [--frames 3] [--device cpu] [--variants lite,mitb1,rn101] [--lite-size 224]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from workers.tmo.flow import DISFlow, flow_to_colour
from workers.tmo.random_init import TMOInitOptions, make_random_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default="lite,mitb1,rn101", help="comma-separated")
    parser.add_argument("--lite-size", type=int, help="the lite variant's input side")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (480, 854, 3), dtype=np.uint8) for _ in range(args.frames + 1)]
    dis = DISFlow()
    start = time.perf_counter()
    colours = [flow_to_colour(dis(a, b)) for a, b in itertools.pairwise(frames)]
    print(f"DIS flow + colours at 854x480: {(time.perf_counter() - start) / args.frames * 1000:.0f} ms/frame")
    for variant in args.variants.split(","):
        options = TMOInitOptions(batches=1, image_size=64)
        network = make_random_network(variant, options=options).to(args.device)  # type: ignore[arg-type]
        if variant == "lite" and args.lite_size:
            network.input_size = args.lite_size
        image = torch.from_numpy(frames[1]).permute(2, 0, 1)[None].float().div(255).to(args.device)
        motion = torch.from_numpy(colours[0]).permute(2, 0, 1)[None].float().div(255).to(args.device)
        with torch.inference_mode():
            network.segment(image, motion)
            for aos in (False, True):
                start = time.perf_counter()
                for _ in range(args.frames):
                    network.segment(image, motion, aos=aos)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                per_frame = (time.perf_counter() - start) / args.frames
                print(f"{variant} at {network.input_size}{' + AOS' if aos else ''}: {per_frame * 1000:.0f} "
                      f"ms/frame ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
