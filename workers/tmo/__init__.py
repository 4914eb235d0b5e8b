"""TMO: unsupervised video object segmentation from a frame and its motion (optical flow, or the frame)."""

from workers.tmo.checkpoint import load_network

__all__ = ["load_network"]
