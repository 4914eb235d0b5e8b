"""`vosd eval --method auto` on a DAVIS-2016 layout: the bundled models, a mask per frame like
--method tmo, scored by `vosd score --unsupervised`."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from auto_clips import clip, square_mask
from streamer.cli.app import app

FRAMES = 6


def test_eval_auto_writes_one_mask_per_frame_and_scores(tmp_path: Path) -> None:
    root = tmp_path / "davis"
    for index, frame in enumerate(clip(FRAMES, appear=1)):
        files = (("JPEGImages", frame, "jpg"), ("Annotations", square_mask(frame) * 255, "png"))
        for folder, image, suffix in files:
            path = root / folder / "480p" / "square" / f"{index:05d}.{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path, quality=95)
    config = tmp_path / "auto.yaml"
    config.write_text("auto:\n  stable_frames: 2\n  min_confidence: 0.5\n  stable_iou: 0.2\n")
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--method", "auto", "--dataset", "D16", "--root", str(root),
                                 "--output", str(out), "--size", "-1", "--device", "cpu",
                                 "--config", str(config), "--reseed", "memory"])
    assert result.exit_code == 0, result.output
    assert "1 sequences, 6 frames" in result.output and "(policy memory)" in result.output
    assert sorted(p.name for p in (out / "square").iterdir()) == [f"{i:05d}.png" for i in range(FRAMES)]
    scored = runner.invoke(app, ["score", "--unsupervised", "--dataset", "D16", "--gt", str(root),
                                 "--pred", str(out), "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["sequences"][0]["frames"] == FRAMES
    wrong = runner.invoke(app, ["eval", "--method", "auto", "--dataset", "D16", "--root", str(root),
                                "--output", str(tmp_path / "o2"), "--aos", "--device", "cpu"])
    assert wrong.exit_code == 2 and "not raft or --aos" in wrong.output
