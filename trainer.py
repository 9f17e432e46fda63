"""The training loop: its state (`Run`), steps, epochs and the checkpoints it writes as it goes.

A checkpoint holds everything to continue as if never stopped: model name and options,
weights, optimizer state, the arguments, the epoch (and position inside it when
interrupted), the history, the best PSNR and every RNG state. It is written atomically
and loads with torch.load(weights_only=True). Under `torchrun` the same loop trains with
DistributedDataParallel; only rank 0 logs and writes. `train.py` is its command line.
"""

from __future__ import annotations

import copy
import math
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from board import check_board, log_epoch, open_board
from catalog import canonical_name, resolve_dataset, set_names
from checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from config import TrainConfig, check, default
from data import PatchSampler
from model import (
    MULTI_FRAME,
    adapt_bands,
    build_model,
    check_forward,
    checkpoint_weights,
    count_parameters,
    deepen,
    model_kind,
    parse_model_options,
)
from registration import registration_border
from runtime import Runtime, agreed, parse_device, process_rank, setup_runtime
from utils import (
    CheckpointError,
    FolderLock,
    UserError,
    clear_stale_temporaries,
    ensure_folder,
    first_line,
    rng_state,
    seed_everything,
    set_rng_state,
)
from validation import (
    Task,
    history_fields,
    multi_frame_task,
    named_history,
    single_image_task,
    write_history_csv,
)

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

# The options of single-image training that PIUnet's bursts refuse when set.
SINGLE_IMAGE_OPTIONS = (
    "train_scales", "grid_stride", "small_images", "degradation", "loss_border", "registration"
)  # fmt: skip


class TrainingStopped(Exception):
    """Training cannot go on (non-finite loss); the last good checkpoint is kept."""


def check_config(config: TrainConfig) -> TrainConfig:
    """Reject settings that cannot train, before anything is loaded or written; returns the
    configuration with --cuda following --device."""
    check(config)
    if config.patch_size % config.scale:
        raise UserError(f"--patch-size {config.patch_size} is not a multiple of --scale {config.scale}")
    if not 2 * config.loss_border < config.patch_size:
        raise UserError(
            f"--loss-border {config.loss_border} must be at least 0 and leave part of the "
            f"{config.patch_size} px patch"
        )
    if config.registration != "none":
        kept = config.patch_size - 2 * config.loss_border - 2 * registration_border(config.scale)
        if kept < 8:
            raise UserError(f"--registration {config.registration} leaves {max(kept, 0)} px of a "
                            f"{config.patch_size} px patch at x{config.scale}; use a --patch-size of at "
                            f"least {config.patch_size - kept + 8}")  # fmt: skip
    _check_model_options(config)
    if config.tensorboard is not None:
        check_board(config.tensorboard)
    if config.device is not None:  # the more specific choice; --cuda follows it
        config = config.replace(cuda=parse_device(config.device).type == "cuda")
    if config.cuda and not torch.cuda.is_available():
        raise UserError("--cuda given, but CUDA is not available here (no GPU, or a CPU-only torch)")
    if model_kind(config.model) == MULTI_FRAME:
        for key in SINGLE_IMAGE_OPTIONS:
            if getattr(config, key) != default(key):
                flag = f"--{key.replace('_', '-')}"
                raise UserError(
                    f"{flag} is for single-image models; {config.model} trains on bursts (--burst-*)"
                )
    return config


def _check_model_options(config: TrainConfig) -> None:
    """Build the network and run a small input through it: options it does not take, or that
    build a network which cannot run, are one line before anything is written."""
    options = parse_model_options(list(config.model_option))
    try:
        with warnings.catch_warnings():  # torch warns of zero-sized layers before they fail
            warnings.simplefilter("ignore")
            model = build_model(config.model, config.scale, **options)
            check_forward(model, config.scale, options.get("in_channels", 3))
    except (TypeError, ValueError) as err:
        raise UserError(f"model {config.model}: bad --model-option ({first_line(err)})") from None


@dataclass
class Progress:
    """Where training stands: completed epochs, and the position inside an interrupted one."""

    epoch: int = 0
    samples: int = 0  # samples of epoch + 1 already trained on (this rank), after an interrupt
    loss_sum: float = 0.0
    batches: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    best_psnr: float | None = None


def make_checkpoint(run: Run) -> dict:
    """Everything needed to rebuild the model and continue training."""
    config, model, progress, ema = run.config, run.model, run.progress, run.ema
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": run.task.kind,
        "model": {
            "name": config.model,
            "scale": config.scale,
            "options": parse_model_options(config.model_option),
        },
        "params": count_parameters(model),
        "state_dict": model.state_dict(),
        "ema_state_dict": ema.model.state_dict() if ema else None,
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "args": config.to_dict(),
        "epoch": progress.epoch,
        "in_epoch": {
            "world": run.runtime.world,
            "samples": progress.samples,
            "loss_sum": progress.loss_sum,
            "batches": progress.batches,
            "seconds": progress.seconds,
        },
        "history": progress.history,
        "best_psnr": progress.best_psnr,
        "rng": rng_state(),
        **({"radiometry": run.task.radiometry} if run.task.radiometry else {}),
    }


def progress_from(checkpoint: dict) -> Progress:
    """The Progress saved in a checkpoint."""
    in_epoch = checkpoint.get("in_epoch") or {}
    return Progress(
        epoch=checkpoint["epoch"],
        samples=in_epoch.get("samples", 0),
        loss_sum=in_epoch.get("loss_sum", 0.0),
        batches=in_epoch.get("batches", 0),
        seconds=in_epoch.get("seconds", 0.0),
        history=named_history(checkpoint),
        best_psnr=checkpoint.get("best_psnr"),
    )


def learning_rate(config: TrainConfig, progress: float) -> float:
    """Learning rate at a point of training, `progress` in epochs (a pure function)."""
    peak = config.lr
    if config.warmup_epochs and progress < config.warmup_epochs:
        return peak * progress / config.warmup_epochs
    if config.schedule == "step":
        return peak * config.lr_gamma ** int(progress // config.lr_step)
    if config.schedule == "cosine":
        return 0.5 * peak * (1 + math.cos(math.pi * min(progress / config.num_epoch, 1.0)))
    return peak


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM: a signal to the whole process group (Ctrl-C,
    `kill -- -PGID`, `pkill -f train.py`, a scheduler) reaches the main process, which saves
    its place and stops them; a worker killed first made the main process die unsaved."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class WeightAverage:
    """Exponential moving average of a model's weights (BasicSR's params_ema); buffers copied."""

    def __init__(self, model: nn.Module, decay: float, state_dict: dict | None = None) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        if state_dict is not None:
            self.model.load_state_dict(state_dict)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average a step towards the model's current weights."""
        for average, weight in zip(self.model.parameters(), model.parameters()):
            average.lerp_(weight.detach(), 1 - self.decay)
        for average, buffer in zip(self.model.buffers(), model.buffers()):
            average.copy_(buffer)


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes its step, saves and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.signal = signum


@dataclass(kw_only=True)
class Run:
    """The training loop's state: what its functions take instead of a dozen parameters."""

    config: TrainConfig
    runtime: Runtime
    model: nn.Module  # the network whose weights are saved
    net: nn.Module  # what is called: the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    task: Task
    loader: DataLoader  # its sampler is a PatchSampler
    progress: Progress
    ema: WeightAverage | None
    out_dir: Path
    stop: StopFlag = field(default_factory=StopFlag)
    board: SummaryWriter | None = None  # --tensorboard (main process)

    @property
    def show(self) -> bool:
        """Whether this process draws progress bars."""
        return not self.config.quiet and self.runtime.main

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def log(self, text: str) -> None:
        """Print on the main process only."""
        self.runtime.log(text)


def train(config: TrainConfig, checkpoint: dict | None = None, overwrite: bool = False) -> int:
    """Train (or continue) the run described by `config`; returns the exit status. A new run
    refuses an out-dir that holds another run's files unless `overwrite`, which removes them."""
    config = check_config(config)
    if process_rank() != 0:  # the main process owns the out-dir
        return _train_locked(config, checkpoint)
    created = not Path(config.out_dir).exists()
    out_dir = ensure_folder(config.out_dir)
    lock_created = not (out_dir / ".lock").exists()
    lock = FolderLock(out_dir)
    finished = False
    try:
        if checkpoint is None:
            _claim_for_a_new_run(out_dir, overwrite)
        for tmp in clear_stale_temporaries(out_dir):  # only once the folder is this run's
            print(f"removed {tmp.name}, left by a write that was killed")
        status = _train_locked(config, checkpoint)
        finished = True
        return status
    finally:
        lock.release()
        if not finished and lock_created and not run_files(out_dir):
            _remove_lock(out_dir, created)


def _remove_lock(out_dir: Path, created: bool) -> None:
    """Undo what a run that failed before writing a file made: its lock, and its out-dir if it
    created that and nothing else is in it."""
    (out_dir / ".lock").unlink(missing_ok=True)
    if created and not any(out_dir.iterdir()):
        out_dir.rmdir()


def run_files(out_dir: Path) -> list[Path]:
    """The files a run writes that are in a folder: checkpoints and history."""
    candidates = [
        out_dir / "last.pth",
        out_dir / "best.pth",
        out_dir / "history.csv",
        *out_dir.glob("epoch-*.pth"),
    ]
    return sorted(path for path in candidates if path.is_file())


def _claim_for_a_new_run(out_dir: Path, overwrite: bool) -> None:
    """Refuse a folder holding another run's files (its best or last epoch would be replaced and
    its other epoch files left beside the new run's), or with `overwrite` remove them."""
    previous = run_files(out_dir)
    if previous and not overwrite:
        shown = ", ".join(path.name for path in previous[:4]) + (", ..." if len(previous) > 4 else "")
        raise UserError(
            f"{out_dir} holds another run's files ({shown}); continue it with `python train.py resume "
            f"{out_dir / 'last.pth'}`, choose another --out-dir, or give --overwrite to replace them"
        )
    for path in previous:
        path.unlink()


def _train_locked(config: TrainConfig, checkpoint: dict | None) -> int:
    """`train` once this process holds the out-dir (the main process locks it)."""
    run = build_run(config, checkpoint)
    progress, runtime, log = run.progress, run.runtime, run.log
    if progress.epoch >= config.num_epoch:
        log(
            f"nothing to do: the checkpoint is at epoch {progress.epoch} "
            f"and --num-epoch is {config.num_epoch}"
        )
        return 0
    log(
        f"training {config.model} x{config.scale} ({count_parameters(run.model):,} parameters) on "
        f"{runtime.device}{f' x{runtime.world} processes' if runtime.world > 1 else ''}"
        f"{f', {runtime.amp_dtype} autocast' if runtime.amp_dtype else ''}: {run.task.summary}; "
        f"{run.steps_per_epoch} steps/epoch; writing to {run.out_dir}"
    )

    previous = {s: signal.signal(s, run.stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for epoch in range(progress.epoch + 1, config.num_epoch + 1):
            status = _train_epoch(run, epoch)
            if status is not None:  # interrupted: save where we are
                if runtime.main:
                    path = save_checkpoint(make_checkpoint(run), run.out_dir / "last.pth")
                    log(
                        f"\ninterrupted at epoch {epoch}, "
                        f"after {progress.batches} of {run.steps_per_epoch} steps; "
                        f"saved {path}\nresume with: python train.py resume {path}"
                    )
                return status
            _end_epoch(run, epoch)
        if runtime.world > 1:
            dist.barrier()  # leave together
        if run.stop.signal is not None:  # arrived during the last validation: all is saved, say so
            log(f"\ninterrupted after the last epoch ({signal.Signals(run.stop.signal).name}); all saved")
            return 128 + run.stop.signal
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if run.board is not None:
            run.board.close()
        if dist.is_initialized():
            # Gloo's destructor joins its worker threads with the GIL held, and a worker may be
            # waiting for the GIL to release a tensor: a deadlock (seen under load as a hang
            # after the last epoch). So drop DDP's reducer first (the group outlives it), let
            # the workers take the GIL, then destroy the group.
            run.net = None
            time.sleep(0.2)
            dist.destroy_process_group()
    return 0


def build_run(config: TrainConfig, checkpoint: dict | None) -> Run:
    """Model, optimizer, data and validation of a run, restored from the checkpoint if given."""
    runtime = setup_runtime(config)
    out_dir = Path(config.out_dir)
    log = runtime.log
    options = parse_model_options(config.model_option)

    seed_everything(config.seed + runtime.rank)
    model = build_model(config.model, scale=config.scale, **options)  # check_config built one
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    progress = Progress()
    if checkpoint is None and config.init_from:
        log(initialise_from(model, config.init_from))
    if checkpoint is not None:
        progress = _restore(checkpoint, model, optimizer)
    # channels_last: faster convolutions on GPUs and on CPUs alike (bench.py measures it)
    model.to(runtime.device, memory_format=torch.channels_last)
    _move_optimizer_state(optimizer, runtime.device)
    ema = None
    if config.ema is not None:  # from the saved average when there is one, else from the weights
        ema = WeightAverage(model, config.ema, (checkpoint or {}).get("ema_state_dict"))
    scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)
    if checkpoint is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    net = model
    if runtime.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[runtime.device] if config.cuda else None,
            find_unused_parameters=model_kind(model) == MULTI_FRAME,  # sigma head idle in epoch 1
        )

    saved_world = ((checkpoint or {}).get("in_epoch") or {}).get("world", runtime.world)
    if progress.samples and saved_world != runtime.world:
        raise UserError(f"the checkpoint stopped inside an epoch with {saved_world} processes; "
                        f"resume it with {saved_world}, not {runtime.world}")  # fmt: skip
    show = not config.quiet and runtime.main
    if runtime.world > 1:  # one process downloads missing sets, the others wait for it
        if runtime.main:
            for name in (*set_names(config.train_data), config.val_data):
                if canonical_name(name):
                    resolve_dataset(name, config.scale, progress=show)
        dist.barrier()
    make_task = multi_frame_task if model_kind(model) == MULTI_FRAME else single_image_task
    task = make_task(config, model, runtime, show)
    share = math.ceil(len(task.dataset) / runtime.world)  # this rank's samples in an epoch
    if progress.samples >= share:
        raise CheckpointError(
            f"malformed training checkpoint (in_epoch.samples {progress.samples}: an epoch here has "
            f"{share}; resume it with the data and --patches-per-image it was trained with)"
        )
    loader = DataLoader(
        task.dataset,
        batch_size=config.batch_size,
        sampler=PatchSampler(len(task.dataset), seed=config.seed, rank=runtime.rank, world=runtime.world),
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        pin_memory=runtime.device.type == "cuda",
        worker_init_fn=_leave_signals_to_the_trainer,
    )
    board = open_board(config.tensorboard) if config.tensorboard and runtime.main else None
    return Run(
        config=config,
        runtime=runtime,
        model=model,
        net=net,
        optimizer=optimizer,
        scaler=scaler,
        task=task,
        loader=loader,
        progress=progress,
        ema=ema,
        out_dir=out_dir,
        board=board,
    )


def _restore(checkpoint: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> Progress:
    """Weights, optimizer state, position and RNG state from a training checkpoint that
    `checkpoint.load_checkpoint` checked against its schema."""
    model.load_state_dict(checkpoint["state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    set_rng_state(checkpoint["rng"])
    return progress_from(checkpoint)


def initialise_from(model: nn.Module, path: str) -> str:
    """Copy a checkpoint's weights (their average if kept) into the model where name and shape
    match; returns what was taken, for the log."""
    source = load_checkpoint(path)
    weights = checkpoint_weights(source)
    own = model.state_dict()
    taken = {name: value for name, value in weights.items() if name in own and own[name].shape == value.shape}
    adapted = {
        name: fitted
        for name, value in weights.items()
        if name in own and name not in taken
        for fitted in [adapt_bands(name, value, own[name].shape)]
        if fitted is not None
    }
    if not taken:
        raise UserError(
            f"--init-from {path}: no weight of {source['model']['name']} fits {type(model).__name__}"
        )
    deeper = {name: value for name, value in deepen(weights, own).items() if name not in taken}
    loaded = {**taken, **adapted, **deeper}
    model.load_state_dict(loaded, strict=False)
    left = sorted({name.split(".")[0] for name in own if name not in loaded})
    origin = f"{source['model']['name']} x{source['model']['scale']}"
    fresh = f"; new: {', '.join(left)}" if left else ""
    notes = f" ({len(adapted)} adapted to the band count: {', '.join(adapted)})" if adapted else ""
    if deeper:
        notes += " (a deeper body: its closing convolution moved, its new blocks start as the identity)"
    return f"initialised {len(loaded)} of {len(own)} tensors from {path} ({origin}){notes}{fresh}"


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Put loaded optimizer moments on the training device (Adam's step count stays on CPU)."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, Tensor) and key != "step":
                state[key] = value.to(device)


def train_step(run: Run, batch: list[Tensor], epoch: int) -> Tensor:
    """One optimisation step on a batch from the loader; returns the (detached) loss."""
    device, optimizer, scaler = run.runtime.device, run.optimizer, run.scaler
    batch = [tensor.to(device, non_blocking=device.type == "cuda") for tensor in batch]
    loss = run.task.step_loss(run.net, batch, epoch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    clip = run.config.grad_clip or (15.0 if run.task.kind == MULTI_FRAME else None)  # PIUnet's 15
    if clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def _train_epoch(run: Run, epoch: int) -> int | None:
    """One epoch (or its rest, after an interrupt); returns an exit status if stopped by a signal."""
    from tqdm import tqdm

    config, progress, runtime, steps_per_epoch = run.config, run.progress, run.runtime, run.steps_per_epoch
    run.loader.sampler.set_epoch(epoch, start=progress.samples)
    if progress.samples == 0:
        progress.loss_sum, progress.batches, progress.seconds = 0.0, 0, 0.0
    cuda = runtime.device.type == "cuda"
    check_every = 16 if cuda else 1  # reading the loss syncs the GPU; check in groups there
    pending: list[Tensor] = []
    started = time.perf_counter()
    bar = tqdm(
        total=steps_per_epoch,
        initial=progress.batches,
        desc=f"epoch {epoch}/{config.num_epoch}",
        disable=not run.show,
        leave=False,
        unit="step",
        dynamic_ncols=True,
    )
    run.net.train()
    rate = learning_rate(config, epoch - 1 + progress.batches / steps_per_epoch)
    for batch in run.loader:
        step = progress.batches + 1
        rate = learning_rate(config, epoch - 1 + step / steps_per_epoch)  # the rate at the step's end
        for group in run.optimizer.param_groups:
            group["lr"] = rate
        loss = train_step(run, batch, epoch)
        if run.ema is not None:
            run.ema.update(run.model)
        pending.append(loss)
        progress.batches = step
        progress.samples += batch[0].shape[0]
        stopping = agreed(run.stop.signal is not None, runtime)
        if len(pending) >= check_every or step == steps_per_epoch or stopping:
            _account(run, pending, (epoch, step), rate)
            elapsed = progress.seconds + time.perf_counter() - started
            bar.set_postfix(
                loss=f"{progress.loss_sum / step:.5f}",
                patches_s=f"{progress.samples * runtime.world / max(elapsed, 1e-9):,.0f}",
            )
        bar.update(1)
        if stopping:
            progress.seconds += time.perf_counter() - started
            bar.close()
            return 128 + (run.stop.signal or signal.SIGTERM)
    _account(run, pending, (epoch, progress.batches), rate)
    bar.close()
    progress.seconds += time.perf_counter() - started
    return None


def _account(run: Run, pending: list[Tensor], position: tuple[int, int], rate: float) -> None:
    """Add the pending losses (up to (epoch, step)) to the epoch's sum; stop every rank at the
    first non-finite one."""
    (epoch, step), progress = position, run.progress
    if not pending:
        return
    values = torch.stack(pending).tolist()
    pending.clear()
    bad = next((i for i, value in enumerate(values) if not math.isfinite(value)), None)
    if agreed(bad is not None, run.runtime):
        where = f"epoch {epoch}, step {step - len(values) + bad + 1}" if bad is not None else f"epoch {epoch}"
        value = values[bad] if bad is not None else "non-finite on another rank"
        last = run.out_dir / "last.pth"
        kept = (
            f"The last good checkpoint is {last} (epoch {progress.epoch})"
            if progress.epoch > 0 and last.is_file()
            else "No checkpoint was written (no epoch completed)"
        )
        raise TrainingStopped(
            f"loss is {value} at {where} (lr {rate:.3g}); stopped. {kept}; try a lower --lr or --grad-clip"
        )
    progress.loss_sum += sum(values)


def _end_epoch(run: Run, epoch: int) -> None:
    """Validate (the weight average when there is one), record the epoch, write the checkpoints (rank 0)."""
    config, task, progress, runtime, out_dir = run.config, run.task, run.progress, run.runtime, run.out_dir
    loss = progress.loss_sum / max(progress.batches, 1)
    if runtime.world > 1:
        totals = torch.tensor([progress.loss_sum, float(progress.batches)], dtype=torch.float64,
                              device=runtime.device)  # fmt: skip
        dist.all_reduce(totals)
        loss = (totals[0] / totals[1]).item()
    due = epoch % config.val_freq == 0 or epoch == config.num_epoch
    score = task.validate(run.ema.model if run.ema else run.model) if due and runtime.main else None
    bicubic = task.baseline
    samples = progress.samples * runtime.world
    values = (epoch, loss, *(score or (None, None)), *bicubic, learning_rate(config, epoch - 1e-9),
              progress.seconds, samples / max(progress.seconds, 1e-9))  # fmt: skip
    row = dict(zip(history_fields(task.kind), values, strict=True))
    progress.history.append(row)
    metric, similarity, baseline = task.labels
    if run.board is not None:
        log_epoch(
            run.board,
            row,
            metric,
            task.example(run.ema.model if run.ema else run.model) if score else None,
        )
    progress.epoch = epoch
    progress.samples, progress.loss_sum, progress.batches, progress.seconds = 0, 0.0, 0, 0.0
    new_best = score is not None and (progress.best_psnr is None or score[0] > progress.best_psnr)
    if new_best:
        progress.best_psnr = score[0]
    if runtime.main:  # last.pth is written last: it commits the epoch once all else is on disk
        checkpoint = make_checkpoint(run)
        if epoch % config.save_freq == 0:
            save_checkpoint(checkpoint, out_dir / f"epoch-{epoch:04d}.pth")
        if new_best:
            save_checkpoint(checkpoint, out_dir / "best.pth")
        write_history_csv(progress.history, out_dir / "history.csv", task.kind)
        save_checkpoint(checkpoint, out_dir / "last.pth")
        val = (
            f"{task.validation_name or config.val_data} {metric} {score[0]:.2f} dB "
            f"{similarity} {score[1]:.4f} "
            f"({baseline} {bicubic[0]:.2f} / {bicubic[1]:.4f}){' best' if new_best else ''}"
            if score
            else "no validation"
        )
        run.log(
            f"epoch {epoch}/{config.num_epoch}  loss {loss:.6f}  {val}  lr {row['lr']:.3g}  "
            f"{row['seconds']:.1f}s  {row['patches_per_s']:,.0f} patches/s"
        )
    if runtime.world > 1:
        dist.barrier()
