"""The training loop: stages in order, AdamW with step decay, AMP on CUDA, DDP, checkpoints and resume.

One process per device. Under ``torch.distributed.run`` (WORLD_SIZE > 1) every rank builds the same network
from the same seed, DDP averages gradients (NCCL on GPU, gloo on CPU), and only rank 0 logs and writes files.
Outputs in ``output_dir/exp_id``:
  ``<exp>_s<stages>_<iteration>.pth``  plain state dicts, loadable by workers.xmem.checkpoint.load_network
  ``<exp>_s<stages>.pth``              the weights at the end of each stage (stages = those run so far)
  ``training_state.pth``               optimiser, scheduler, scaler, stage, iteration, plan RNG (--resume)
  ``losses.csv`` / ``losses.png``      the loss log and its plot

Run on several processes with ``python -m torch.distributed.run --standalone --nproc_per_node=N -m
workers.training.trainer <the options of vosd train>``.

Size: one training loop shared by the stages, DDP and resume. The checkpoint I/O and the stage schedule
can move out; left whole while the bundled-model work (#11) changes this loop, so the two do not collide.
"""

from __future__ import annotations

import collections
import inspect
import logging
import os
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, RandomSampler

from workers.training.augment import ClipAugmentation, video_augmentation
from workers.training.config import DataSource, StageConfig, TrainConfig, parse_stages
from workers.training.curves import LossLog, LossRow, plot_curves
from workers.training.datasets import (
    StaticClipDataset,
    StillLoader,
    SyntheticStills,
    SyntheticVideoDataset,
    VideoClipDataset,
    davis_folders,
    list_davis,
    list_static,
    list_youtube,
    sequence_names,
    youtube_folders,
)
from workers.training.losses import bootstrap_fraction, clip_loss
from workers.training.model import TrainingXMem, draw_plan
from workers.training.synthetic import SyntheticConfig
from workers.xmem.backbones import OTHERS_CHANNEL
from workers.xmem.checkpoint import load_network, save_state_dict
from workers.xmem.network import NetworkSpec, XMemNetwork
from workers.xmem.random_init import make_random_network

log = logging.getLogger(__name__)

STATE_FILE = "training_state.pth"
PLOT_FILE = "losses.png"


class TrainingError(RuntimeError):
    """The run cannot start or continue as configured."""


@dataclass(frozen=True)
class RankContext:
    """Where this process sits in the run.

    Attributes:
        rank: global rank (0 when not distributed).
        world_size: number of processes.
        device: the device this process trains on.
    """

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(option: str, local_rank: int) -> torch.device:
    """"auto" -> this rank's GPU when CUDA is available, else the CPU; explicit names pass through."""
    if option == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(option)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_ranks(device_option: str) -> RankContext:
    """Join the process group when launched by torch.distributed.run (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_option, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return RankContext(rank=rank, world_size=world_size, device=device)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (run seed, stage, rank, iteration) that do not collide."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def default_spec(config: TrainConfig) -> NetworkSpec:
    """The variant's layout, with the run's hidden_dim when given."""
    return NetworkSpec.preset(config.variant, config.hidden_dim)


def training_network(source: XMemNetwork) -> TrainingXMem:
    """A TrainingXMem with the same spec and weights as ``source`` (allocated without a throw-away init)."""
    with torch.device("meta"):
        network = TrainingXMem(source.spec)
    network = network.to_empty(device="cpu")
    network.load_state_dict(source.state_dict(), strict=True)
    return network


def initial_network(config: TrainConfig, weights: Path | None) -> TrainingXMem:
    """From a checkpoint when given (the checkpoint fixes the layout), else calibrated random weights."""
    if weights is not None:
        log.info("starting from %s", weights)
        return training_network(load_network(weights, fast=False))
    spec = default_spec(config)
    key_encoder_state = None
    if spec.variant == "lite":
        from workers.training.pretrained import PretrainedWeightsError, lite0_imagenet_state

        try:
            key_encoder_state = lite0_imagenet_state()
        except PretrainedWeightsError as error:
            raise TrainingError(str(error)) from error
    log.info("starting from calibrated random weights (%s variant%s)", config.variant,
             ", ImageNet key encoder" if key_encoder_state else "")
    network = make_random_network(spec, seed=config.seed, key_encoder_state=key_encoder_state)
    if key_encoder_state is not None:
        silence_others_channel(network)
    return training_network(network)


@torch.no_grad()
def silence_others_channel(network: XMemNetwork) -> None:
    """Zero the value encoder's weights on the "other objects" input, as XMem zero-initialises the mask
    channels it adds to a pretrained trunk: single-object data never drives that input, so random weights
    there would stay untrained and perturb every multi-object video."""
    network.value_encoder.conv1.weight[:, OTHERS_CHANNEL] = 0


def hold_frozen_batchnorm(network: torch.nn.Module, prefixes: tuple[str, ...]) -> None:
    """Put the BatchNorm layers under frozen prefixes in eval mode, so train_batchnorm leaves them alone."""
    for name, module in network.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d) and name.startswith(prefixes):
            module.eval()


def freeze_parameters(network: torch.nn.Module, prefixes: tuple[str, ...]) -> None:
    """Keep the parameters whose names start with one of ``prefixes`` fixed (their BatchNorm statistics too,
    see ``hold_frozen_batchnorm``); a prefix that matches no parameter is an error."""
    names = [name for name, _ in network.named_parameters()]
    unmatched = [prefix for prefix in prefixes if not any(name.startswith(prefix) for name in names)]
    if unmatched:
        raise TrainingError(f"--freeze: no parameter name starts with {', '.join(unmatched)}")
    frozen = 0
    for name, parameter in network.named_parameters():
        if name.startswith(prefixes):
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    if prefixes:
        log.info("frozen: %s (%.2fM parameters)", ", ".join(prefixes), frozen / 1e6)


# ------------------------------------------------------------------------------------------------------ data


def video_dataset(config: TrainConfig, stage: StageConfig, augmentation: ClipAugmentation, max_skip: int,
                  finetune: bool) -> Dataset | None:
    """DAVIS (repeated ``davis_repeat`` times) plus YouTube-VOS; None when no video folder is configured."""
    parts: list[Dataset] = []
    warn_unmatched_held_out(config)
    options = dict(num_frames=stage.num_frames, max_objects=stage.max_objects, augmentation=augmentation,
                   max_skip=max_skip, finetune=finetune)
    if config.davis_root is not None:
        records = list_davis(config.davis_root, include=config.davis_include, exclude=config.held_out)
        parts += [VideoClipDataset(records, **options)] * config.davis_repeat
    if config.yv_root is not None:
        parts.append(VideoClipDataset(list_youtube(config.yv_root, exclude=config.held_out), **options))
    return ConcatDataset(parts) if parts else None


def warn_unmatched_held_out(config: TrainConfig) -> None:
    """Held-out names that match no sequence of any configured video dataset are probably typos."""
    roots = ([davis_folders(config.davis_root)[0]] if config.davis_root else []) + (
        [youtube_folders(config.yv_root)[0]] if config.yv_root else [])
    known = set().union(*(sequence_names(root) for root in roots))
    unmatched = sorted(set(config.held_out) - known)
    if unmatched:
        log.warning("held-out names match no training sequence (typo?): %s", ", ".join(unmatched))


def build_dataset(config: TrainConfig, stage: StageConfig, max_skip: int, finetune: bool) -> Dataset:
    """The stage's clip dataset for the current max skip and fine-tuning phase."""
    augmentation = ClipAugmentation(crop_size=config.crop_size)
    render_side = round(config.crop_size * 1.25)
    source: DataSource | None = stage.source
    if source == "video":
        dataset = video_dataset(config, stage, video_augmentation(config.crop_size), max_skip, finetune)
        if dataset is not None:
            return dataset
        source = fallback(stage, "--davis-root / --yv-root")
    if source == "static":
        if config.static_root is not None:
            stills = StillLoader(list_static(config.static_root))
        else:
            fallback(stage, "--static-root")
            still_config = SyntheticConfig(height=render_side, width=render_side)
            stills = SyntheticStills(still_config, config.synthetic_clips)
        return StaticClipDataset(stills, num_frames=stage.num_frames, augmentation=augmentation)
    return SyntheticVideoDataset(config.synthetic_clips, num_frames=stage.num_frames,
                                 max_objects=stage.max_objects, augmentation=augmentation, max_skip=max_skip)


def fallback(stage: StageConfig, missing: str) -> DataSource:
    """The stage's fallback source, or a clear error when it has none."""
    if stage.fallback_source is None:
        raise TrainingError(f"stage {stage.name} trains on {stage.source} data: give {missing}")
    log.warning("stage %s: no %s given; training on %s data instead", stage.name, missing,
                stage.fallback_source)
    return stage.fallback_source


def batches(dataset: Dataset, batch_size: int, workers: int, ctx: RankContext, seed: int) -> Iterator[dict]:
    """Endless shuffled batches for this rank (each rank sees its own share of every epoch)."""
    minimum = batch_size * ctx.world_size
    if len(dataset) < minimum:  # tiny datasets: repeat so an epoch yields at least one batch per rank
        dataset = ConcatDataset([dataset] * -(-minimum // len(dataset)))
    generator = torch.Generator().manual_seed(seed)
    if ctx.distributed:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=seed % 2**31, drop_last=True)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                        generator=generator, pin_memory=ctx.device.type == "cuda")
    epoch = 0
    while True:
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


# ----------------------------------------------------------------------------------------------- checkpoints


def stage_prefix(config: TrainConfig, stages: tuple[str, ...], index: int) -> str:
    """"<exp>_s<stages so far>", e.g. run_s03 during stage 3 of "03"."""
    return f"{config.exp_id}_s{''.join(stages[:index + 1])}"


def gather_plan_states(generator: torch.Generator, ctx: RankContext) -> list[torch.Tensor]:
    """Every rank's plan-generator state (memory frames and deep updates), collected on all ranks."""
    if not ctx.distributed:
        return [generator.get_state()]
    everyone: list[torch.Tensor | None] = [None] * ctx.world_size
    dist.all_gather_object(everyone, generator.get_state())
    return [state for state in everyone if state is not None]


def restore_plan_state(
    states: list[torch.Tensor] | None, generator: torch.Generator, ctx: RankContext
) -> None:
    """Put this rank's saved plan-generator state back (when one was saved for the same world size)."""
    if states is None or len(states) != ctx.world_size:
        log.warning("no matching saved random state for %d rank(s): memory / deep-update draws restart from "
                    "derived seeds", ctx.world_size)
        return
    generator.set_state(states[ctx.rank])


def write_training_state(folder: Path, state: dict[str, object]) -> None:
    """Atomically replace the training-state file."""
    partial = folder / (STATE_FILE + ".partial")
    torch.save(state, partial)
    os.replace(partial, folder / STATE_FILE)


def read_training_state(folder: Path) -> dict:
    """The saved training state; loaded weights-only (MultiStepLR keeps its milestones in a Counter)."""
    path = folder / STATE_FILE
    if not path.is_file():
        raise TrainingError(f"--resume: no {STATE_FILE} in {folder}")
    with torch.serialization.safe_globals([collections.Counter]):
        return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------------ loop


@dataclass
class Meter:
    """Sums of losses over the current logging interval."""

    loss: float = 0.0
    ce: float = 0.0
    dice: float = 0.0
    count: int = 0
    started: float = 0.0

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        self.loss += float(losses["total"])
        self.ce += float(losses["ce"])
        self.dice += float(losses["dice"])
        self.count += 1

    def averaged(self, ctx: RankContext) -> tuple[float, float, float]:
        """Means over the interval and over all ranks."""
        sums = torch.tensor([self.loss, self.ce, self.dice, float(self.count)], dtype=torch.float64)
        if ctx.distributed:
            sums = sums.to(ctx.device)
            dist.all_reduce(sums)
        loss, ce, dice, count = sums.tolist()
        return loss / count, ce / count, dice / count


def first_frame_masks(labels: torch.Tensor, max_objects: int) -> torch.Tensor:
    """(B, H, W) labels 0..N -> (B, N, H, W) float one-hot object masks (background dropped)."""
    return F.one_hot(labels, max_objects + 1)[..., 1:].permute(0, 3, 1, 2).float()


def buffer_sync(enabled: bool) -> dict[str, bool]:
    """DDP's option for syncing buffers (BatchNorm statistics) each forward, under this torch's name for it.

    Frozen statistics never change, so syncing them would only cost time.
    """
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return {"forward_sync_buffers": enabled}
    return {"broadcast_buffers": enabled}


def weight_fingerprint(network: torch.nn.Module) -> torch.Tensor:
    """Position-weighted float64 sums of every parameter: equal on two ranks only if the weights are."""
    values = [p.detach().double().flatten() for p in network.parameters()]
    flat = torch.cat(values)
    positions = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    return torch.stack([flat.sum(), (flat * positions.remainder(9973)).sum()])


def check_ranks_agree(network: torch.nn.Module, ctx: RankContext) -> None:
    """Fail loudly if data-parallel ranks ended a stage with different weights (a broken gradient sync)."""
    fingerprint = weight_fingerprint(network)
    everyone = [torch.zeros_like(fingerprint) for _ in range(ctx.world_size)]
    dist.all_gather(everyone, fingerprint)
    if any(not torch.equal(other, everyone[0]) for other in everyone):
        raise TrainingError(f"ranks hold different weights: fingerprints {[f.tolist() for f in everyone]}")
    if ctx.is_main:
        log.info("weights identical on %d ranks (fingerprint %s)", ctx.world_size, everyone[0].tolist())


class Trainer:
    """Runs the configured stages on this rank."""

    def __init__(self, config: TrainConfig, ctx: RankContext) -> None:
        self.config = config
        self.ctx = ctx
        self.stages = parse_stages(config.stages)
        self.folder = config.experiment_dir
        self.loss_log = LossLog(self.folder) if ctx.is_main else None
        self.step = 0  # iterations over all stages, the x axis of the curves
        self.deadline: float | None = None
        self.out_of_time = False

    def run(self) -> Path:
        """Train every stage (continuing a saved run with --resume); returns the final weights."""
        config = self.config
        if config.minutes is not None:
            self.deadline = time.monotonic() + 60.0 * config.minutes
        resume = read_training_state(self.folder) if config.resume else None
        if resume is not None:
            if resume["stages"] != config.stages:
                raise TrainingError(
                    f"--resume: the saved run has stages {resume['stages']!r}, not {config.stages!r}")
            network = initial_network(config, self.folder / resume["weights"])
            self.step = int(resume["step"])
        else:
            network = initial_network(config, config.load_network)
        freeze_parameters(network, config.frozen)
        network.to(self.ctx.device)
        final = self.folder / f"{stage_prefix(config, self.stages, len(self.stages) - 1)}.pth"
        for index, name in enumerate(self.stages):
            if resume is not None and index < resume["stage_index"]:
                continue
            stage = config.stage(name)
            saved = resume if resume is not None and index == resume["stage_index"] else None
            final = self.run_stage(network, index, stage, saved)
            if self.out_of_time:
                if index + 1 < len(self.stages):
                    log.info("--minutes %g spent: skipping stage(s) %s", config.minutes,
                             ", ".join(self.stages[index + 1:]))
                break
        if self.loss_log is not None:
            self.loss_log.close()
        return final

    def run_stage(self, network: TrainingXMem, index: int, stage: StageConfig, saved: dict | None) -> Path:
        """Train one stage from iteration 0 or from a saved state; returns the stage's final weights."""
        ctx, config = self.ctx, self.config
        if stage.batch_size % ctx.world_size:
            raise TrainingError(f"stage {stage.name}: batch size {stage.batch_size} is not divisible by "
                                f"{ctx.world_size} processes")
        network.train(config.train_batchnorm)
        hold_frozen_batchnorm(network, config.frozen)
        optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=stage.lr,
                                      weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(stage.lr_steps), config.gamma)
        use_amp = config.amp and ctx.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        iteration = 0
        generator = torch.Generator().manual_seed(derive_seed(config.seed, index, ctx.rank))
        if saved is not None:
            iteration = int(saved["iteration"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
            restore_plan_state(saved["plan_rng"], generator, ctx)
            log.info("stage %s: resuming at iteration %d", stage.name, iteration)
        model = network
        if ctx.distributed:
            model = DistributedDataParallel(
                network, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=stage.num_frames < 3, **buffer_sync(config.train_batchnorm))
        prefix = stage_prefix(config, self.stages, index)

        def save(at: int, *, collective: bool = True) -> Path:
            # gathering RNG states is collective; after a failure other ranks may be gone, so skip it then
            plan_rng = gather_plan_states(generator, ctx) if collective else None
            weights = self.folder / f"{prefix}_{at}.pth"
            if ctx.is_main:
                save_state_dict(network, weights)
                write_training_state(self.folder, {
                    "stages": config.stages, "stage_index": index, "stage": stage.name, "iteration": at,
                    "step": self.step, "weights": weights.name, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "plan_rng": plan_rng,
                    "config": config.to_dict(),
                })
                log.info("saved %s", weights)
            return weights

        per_rank_batch = stage.batch_size // ctx.world_size
        workers = config.num_workers // ctx.world_size
        phase = None
        stream: Iterator[dict] = iter(())
        meter = Meter(started=time.perf_counter())
        progress = self.progress(stage, iteration)
        last_saved = iteration if saved is not None else -1
        failed = True
        try:
            while iteration < stage.total_iterations:
                if self.time_is_up():
                    self.out_of_time = True
                    log.info("stage %s: --minutes %g spent, stopping at iteration %d of %d", stage.name,
                             config.minutes, iteration, stage.total_iterations)
                    break
                finetune = iteration >= stage.iterations
                wanted = (stage.max_skip_at(iteration), finetune)
                if wanted != phase:
                    phase = wanted
                    log.info("stage %s: max skip %d%s", stage.name, phase[0],
                             ", fine-tuning" if finetune else "")
                    dataset = build_dataset(config, stage, *phase)
                    # the data stream is reseeded from (run, stage, rank, iteration) whenever it is rebuilt,
                    # so a resumed run gets fresh but reproducible clips
                    data_seed = derive_seed(config.seed, index, ctx.rank, iteration)
                    torch.manual_seed(data_seed)  # datasets read torch.initial_seed() when not in workers
                    stream = batches(dataset, per_rank_batch, workers, ctx, data_seed)
                lr = optimizer.param_groups[0]["lr"]
                losses = self.train_step(model, next(stream), stage, iteration, generator, optimizer, scaler,
                                         use_amp)
                scheduler.step()
                iteration += 1
                self.step += 1
                meter.add(losses)
                if progress is not None:
                    progress.update(progress.task_ids[0], advance=1, description=f"stage {stage.name} "
                                    f"loss {float(losses['total']):.3f}")
                if iteration % config.log_every == 0 or iteration == stage.total_iterations:
                    self.log_interval(meter, stage, iteration, lr)
                    meter = Meter(started=time.perf_counter())
                if iteration % config.save_every == 0:
                    save(iteration)
                    last_saved = iteration
            failed = False
        finally:
            if progress is not None:
                progress.stop()
            if iteration != last_saved and iteration > 0:
                save(iteration, collective=not failed)  # also after an interruption: --resume continues here
        if ctx.distributed:
            check_ranks_agree(network, ctx)
        final = self.folder / f"{prefix}.pth"
        if ctx.is_main:
            save_state_dict(network, final)
            self.plot()
        if ctx.distributed:
            dist.barrier()
        return final

    def time_is_up(self) -> bool:
        """Whether the --minutes budget is spent; ranks agree (the slowest clock decides for all)."""
        if self.deadline is None:
            return False
        up = time.monotonic() >= self.deadline
        if self.ctx.distributed:
            flag = torch.tensor([1.0 if up else 0.0], device=self.ctx.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            up = bool(flag.item() > 0)
        return up

    def train_step(self, model: torch.nn.Module, batch: dict, stage: StageConfig, iteration: int,
                   generator: torch.Generator, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   use_amp: bool) -> dict[str, torch.Tensor]:
        """Forward a batch of clips, back-propagate, clip gradients, update; returns the detached losses."""
        device = self.ctx.device
        images = batch["images"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        num_objects = batch["num_objects"].to(device)
        plan = draw_plan(images.shape[0], images.shape[1], stage.num_ref_frames, self.config.deep_update_prob,
                         generator)
        autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext()
        with autocast:
            output = model(images, first_frame_masks(labels[:, 0], stage.max_objects), num_objects, plan)
        fraction = bootstrap_fraction(iteration, stage.bootstrap_start, stage.bootstrap_end,
                                      stage.bootstrap_top_p)
        losses = clip_loss(output.logits, output.probs, labels, num_objects.tolist(), fraction)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        if self.config.clip_grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        return {name: value.detach() for name, value in losses.items()}

    def log_interval(self, meter: Meter, stage: StageConfig, iteration: int, lr: float) -> None:
        """Average the interval over ranks; rank 0 writes the CSV row and a log line."""
        loss, ce, dice = meter.averaged(self.ctx)
        if self.loss_log is None:
            return
        seconds = (time.perf_counter() - meter.started) / max(meter.count, 1)
        fraction = bootstrap_fraction(iteration - 1, stage.bootstrap_start, stage.bootstrap_end,
                                      stage.bootstrap_top_p)
        self.loss_log.write(LossRow(stage.name, self.step, iteration, lr, loss, ce, dice, fraction, seconds))
        log.info("stage %s it %d: loss %.4f (ce %.4f, dice %.4f) lr %.2e, %.2f s/it", stage.name, iteration,
                 loss, ce, dice, lr, seconds)

    def progress(self, stage: StageConfig, start: int) -> Progress | None:
        """A rich progress bar on rank 0."""
        if not self.ctx.is_main:
            return None
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn())
        progress.add_task(f"stage {stage.name}", total=stage.total_iterations, completed=start)
        progress.start()
        return progress

    def plot(self) -> None:
        csv_path = self.folder / "losses.csv"
        if csv_path.is_file() and csv_path.stat().st_size > 0:
            try:
                plot_curves(csv_path, self.folder / PLOT_FILE)
            except ValueError as error:  # nothing logged yet
                log.info("no plot: %s", error)


def train(config: TrainConfig) -> Path:
    """Run training in this process (one rank of a distributed run, or alone); returns the final weights."""
    ctx = init_ranks(config.device)
    if ctx.is_main:
        log.info("training %s on %s with %d process(es): %s", config.exp_id, ctx.device, ctx.world_size,
                 config.to_dict())
    try:
        return Trainer(config, ctx).run()
    finally:
        if ctx.distributed and dist.is_initialized():
            dist.destroy_process_group()


def main() -> None:
    """Entry point for torch.distributed.run: the same options as `vosd train`."""
    import typer

    from workers.training.cli import train_command

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    typer.run(train_command)


if __name__ == "__main__":
    main()
