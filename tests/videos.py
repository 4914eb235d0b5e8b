"""Synthetic test videos: clips with known masks, broken files, and a killable live MPEG-TS server.

Every test that needs video writes its own small clip here (real H.264 through PyAV), so tests never
depend on downloaded data or on the ffmpeg CLI. Clips are tiny (160x120, a few dozen frames) because
the CI machine is shared and has two cores.

The live server runs in a separate process (this file executed as a script) so a test can kill it
mid-stream, pause it, or start it again on the same port, exactly as a camera or relay would fail.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamer.masks import write_index_mask

Size = tuple[int, int]
"""(width, height), the order video tools use."""


# --------------------------------------------------------------------------------------------- rendering


def _background(size: Size, seed: int = 7) -> np.ndarray:
    """A smooth gradient with coarse texture: compressible, but not flat (so shapes are distinguishable)."""
    width, height = size
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 60, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.int16)
    texture = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, :width]
    ys, xs = np.mgrid[0:height, 0:width]
    gradient = np.stack([40 + 80 * xs / width, 40 + 80 * ys / height, 90 + 0 * xs], axis=-1)
    return np.clip(gradient + texture, 0, 255).astype(np.uint8)


def shape_masks(index: int, frames: int, size: Size, objects: int = 1) -> np.ndarray:
    """The true index mask of frame ``index``: object 1 is a disc on a horizontal sweep, object 2 a square
    moving diagonally (drawn on top, so it wins where they overlap)."""
    if objects not in (1, 2):
        raise ValueError(f"objects must be 1 or 2, got {objects}")
    width, height = size
    t = index / max(frames - 1, 1)
    ys, xs = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), dtype=np.uint8)
    radius = max(3, min(width, height) // 6)
    cx = radius + t * (width - 2 * radius - 1)
    cy = height / 2 + (height / 6) * math.sin(2 * math.pi * t)
    mask[(xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2] = 1
    if objects == 2:
        side = max(4, min(width, height) // 5)
        x0 = round((width - side - 1) * (1 - t))
        y0 = round((height - side - 1) * t)
        mask[y0 : y0 + side, x0 : x0 + side] = 2
    return mask


OBJECT_COLOURS = np.array([[0, 0, 0], [235, 235, 40], [40, 200, 235]], dtype=np.uint8)
"""Colours the shapes are painted in (index = object label)."""


def render_moving_shapes(
    frames: int = 48, size: Size = (160, 120), objects: int = 1, tint: tuple[int, int, int] = (0, 0, 0)
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(rgb uint8 (H, W, 3), index mask uint8 (H, W))`` per frame, one at a time."""
    background = _background(size).astype(np.int16) + np.asarray(tint, dtype=np.int16)
    background = np.clip(background, 0, 255).astype(np.uint8)
    for index in range(frames):
        mask = shape_masks(index, frames, size, objects)
        image = background.copy()
        image[mask > 0] = OBJECT_COLOURS[mask[mask > 0]]
        yield image, mask


def _add_video_stream(container: av.container.OutputContainer, codec: str, size: Size, fps: int, gop: int):
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    if codec == "libx264":
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(gop), "crf": "20"}
    else:
        stream.options = {"g": str(gop), "qscale": "3"}
    return stream


def write_moving_shape_video(
    path: str | Path,
    frames: int = 48,
    size: Size = (160, 120),
    fps: int = 24,
    codec: str = "libx264",
    objects: int = 1,
    *,
    faststart: bool = False,
    gop: int = 12,
) -> list[np.ndarray]:
    """Encode a clip of moving shapes at ``path`` (container from the suffix) and return its true masks.

    ``faststart`` puts the MP4 index (moov) at the front, which is what makes a truncated MP4 partly
    decodable; without it a cut MP4 has no index at all.
    """
    path = Path(path)
    options = {"movflags": "+faststart"} if faststart and path.suffix in (".mp4", ".mov") else {}
    masks: list[np.ndarray] = []
    with av.open(str(path), "w", options=options) as container:
        stream = _add_video_stream(container, codec, size, fps, gop)
        for image, mask in render_moving_shapes(frames, size, objects):
            masks.append(mask)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return masks


def interior(binary: np.ndarray, margin: int = 2) -> np.ndarray:
    """A binary mask shrunk by ``margin`` pixels, away from the edges that lossy compression blurs."""
    inner = binary.copy()
    for axis in (0, 1):
        for shift in (-margin, margin):
            inner &= np.roll(binary, shift, axis=axis)
    return inner


def write_first_mask(path: str | Path, mask: np.ndarray) -> Path:
    """Write the first-frame mask a job starts from, as a DAVIS palette PNG."""
    path = Path(path)
    write_index_mask(path, mask)
    return path


# ------------------------------------------------------------------------------------------ broken files


def truncate_file(source: str | Path, destination: str | Path, fraction: float = 0.6) -> Path:
    """Copy the first ``fraction`` of a file's bytes, as a broken download or crashed recorder leaves it."""
    data = Path(source).read_bytes()
    destination = Path(destination)
    destination.write_bytes(data[: int(len(data) * fraction)])
    return destination


def corrupt_file(
    source: str | Path, destination: str | Path, start: float = 0.05, end: float = 0.7, seed: int = 3
) -> Path:
    """Copy a file with the bytes between ``start`` and ``end`` (fractions of its size) replaced by noise.

    For an MP4 written without faststart the index is at the end and survives, so the container opens
    and every packet is garbage: the decoder, not the demuxer, has to notice.
    """
    data = bytearray(Path(source).read_bytes())
    low, high = int(len(data) * start), int(len(data) * end)
    data[low:high] = np.random.default_rng(seed).integers(0, 256, high - low, dtype=np.uint8).tobytes()
    destination = Path(destination)
    destination.write_bytes(bytes(data))
    return destination


def write_zero_byte_file(path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_text_file(path: str | Path) -> Path:
    """A text file with a video suffix, as a mistaken upload would be."""
    path = Path(path)
    path.write_text("this is a text file, not a video\n" * 50)
    return path


# ------------------------------------------------------------------------------------------- live server


def free_port(kind: str = "tcp") -> int:
    """A port on 127.0.0.1 that nothing is bound to right now."""
    socket_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, socket_type) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def live_url(transport: str, port: int) -> str:
    """The URL a client opens to receive the stream ``serve_live`` sends."""
    return f"{transport}://127.0.0.1:{port}"


@dataclass
class LiveServer:
    """A live MPEG-TS stream sent by a background process; kill, pause or restart it to simulate failures."""

    transport: str
    port: int
    fps: int = 24
    size: Size = (160, 120)
    tint: tuple[int, int, int] = (0, 0, 0)
    lifetime: float = 60.0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return live_url(self.transport, self.port)

    def start(self) -> LiveServer:
        """Start (or start again, on the same port) the sending process."""
        self.stop()
        command = [
            sys.executable, str(Path(__file__).resolve()), "serve",
            "--transport", self.transport, "--port", str(self.port), "--fps", str(self.fps),
            "--size", f"{self.size[0]}x{self.size[1]}", "--tint", ",".join(map(str, self.tint)),
            "--lifetime", str(self.lifetime),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def kill(self) -> None:
        """SIGKILL: the stream stops mid-packet, as when a camera loses power."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the connection stays open but no data flows (a hung camera or relay)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
            self.kill()
            self.process = None

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_live(
    transport: str, port: int, fps: int, size: Size, tint: tuple[int, int, int], lifetime: float
) -> None:
    """Send moving shapes as real-time MPEG-TS until killed or ``lifetime`` seconds pass.

    UDP sends to a client listening on the port; TCP listens on the port and serves one client
    (the client connects, as to an RTSP-over-TCP camera). A keyframe every half second lets a client
    that (re)joins mid-stream start decoding quickly.
    """
    if transport == "udp":
        url = f"udp://127.0.0.1:{port}?pkt_size=1316"
    elif transport == "tcp":
        url = f"tcp://127.0.0.1:{port}?listen=1"
    else:
        raise ValueError(f"unknown transport {transport!r}")
    cycle = [image for image, _ in render_moving_shapes(max(2, fps * 2), size, 1, tint)]
    with av.open(url, "w", format="mpegts", options={"flush_packets": "1"}) as container:
        stream = _add_video_stream(container, "libx264", size, fps, gop=max(1, fps // 2))
        start = time.monotonic()
        index = 0
        while time.monotonic() - start < lifetime:
            frame = av.VideoFrame.from_ndarray(cycle[index % len(cycle)], format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
            index += 1
            time.sleep(max(0.0, start + index / fps - time.monotonic()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="send a live MPEG-TS stream on 127.0.0.1")
    serve.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--fps", type=int, default=24)
    serve.add_argument("--size", default="160x120")
    serve.add_argument("--tint", default="0,0,0")
    serve.add_argument("--lifetime", type=float, default=60.0)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    red, green, blue = (int(v) for v in args.tint.split(","))
    try:
        serve_live(args.transport, args.port, args.fps, (width, height), (red, green, blue), args.lifetime)
    except (BrokenPipeError, ConnectionError, av.FFmpegError) as error:
        print(f"live server stopped: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
