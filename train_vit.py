"""Train a plain ViT on ImageNet-1k the way big_vision's `configs/vit_s16_i1k.py` does.

"Better plain ViT baselines for ImageNet-1k" (ViT-S/16: 76.5% top-1 after 90 epochs, 6 h 30
on a TPUv3-8), with FFCV loaders. RECIPE.md is the spec; configs/ holds the runs.

    torchrun --nproc_per_node=8 train_vit.py --config-file configs/vit_s16_90ep.yaml
    python train_vit.py --config-file configs/demo.yaml --logging.folder=runs/demo
    python train_vit.py --help        # every setting, with its default

Several nodes: the same command on every node with torchrun's rendezvous flags
(`--nnodes=2 --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT`), logging.folder on a shared
filesystem. training.batch_size is the GLOBAL batch, split evenly over the ranks.

Written to logging.folder (rank 0): config.json, log.jsonl (one strict JSON object per line:
train metrics every logging.log_every steps, evals), checkpoint.pt and checkpoint.prev.pt
(train/checkpoints.py: every logging.checkpoint_every steps and at the end), curves.png and
summary.json at the end (train/report.py). Running the same command with the same folder resumes
from checkpoint.pt, mid-epoch included, and ends bit-identical to a run that was never
stopped, weights and train records (tested on CPU and on an H100).

Exit codes: 0 done (or max_steps reached); 2 configuration error or unusable input file
(nothing was trained); 1 non-finite loss, eval loss or state (nothing is saved from it; the
error names the file holding the last good state and how to resume from it); 143
(= 128 + SIGTERM) after a SIGTERM: a checkpoint was written at the next step boundary, run
the same command again to resume (torchrun --max-restarts does so by itself).
"""
import os

# The train loader's background thread and an eval loader may run numba parallel code at
# the same time; numba's default 'workqueue' layer aborts on that, tbb and omp do not.
os.environ.setdefault("NUMBA_THREADING_LAYER", "threadsafe")

import math  # noqa: E402
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from fastargs import get_current_config  # noqa: F401 (demo.py reads the config)
from fastargs.decorators import param

from vit_speedrun.cli import ConfigError
from vit_speedrun.models import vit
from vit_speedrun.pp import ffcv_ops
from vit_speedrun.train import checkpoints, evaluate, loaders, report, trackers
from vit_speedrun.train.config import SECTIONS, parse_config  # noqa: F401 (declares the settings)
from vit_speedrun.train.loaders import HostLead
from vit_speedrun.train.ranks import Ranks
from vit_speedrun.train.step import (accumulation_step, build_optimizer, compile_model,
                                     optimization_step, schedule, wrap_ddp)

EXIT_OK, EXIT_NONFINITE, EXIT_CONFIG, EXIT_SIGTERM = 0, 1, 2, 128 + signal.SIGTERM
STUCK_STEPS = 300  # a loss still at ln(num_classes) after this many steps is warned of


_LOADERS = loaders.LOADERS  # every ffcv Loader made here lives as long as the process (loaders.py)


class NonFinite(Exception):
    """The training loss, an eval loss or the state to checkpoint is NaN or inf."""


def default_loader_threads():
    """This rank's share of the cores minus one: the training loop's Python thread (which
    launches the GPU work) needs a core of its own. On an H100 box with 16 cores, 15 loader
    threads trained 21% faster than 16 (5,282 vs 4,355 img/s, README 'Speed')."""
    cores = len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, cores - 1)


class Run:
    """One training run as its settings describe it, built in __init__ in the order of the
    methods below: the ranks, the checked input files, the loaders, the model, the optimizer,
    the state resumed from a checkpoint, and the run's log. Trainer trains it."""

    def __init__(self, config, started=None):
        self.config = config
        self.started = time.perf_counter() if started is None else started  # wall-clock origin
        self.setup_distributed()
        self.check_trackers()
        self.check_datasets()
        self.create_train_loader()
        self.create_eval_loaders()
        self.create_model()
        self.create_optimizer()
        self.resume_from_checkpoint()
        self.initialize_logger()

    @param("training.batch_size")
    @param("training.grad_accum")
    @param("eval.batch_size", "eval_batch_size")
    @param("training.seed")
    def setup_distributed(self, batch_size, grad_accum, eval_batch_size, seed):
        """This rank, its device and the process group (train/ranks.py; also for a single torchrun
        process: the path an 8-GPU run takes); the global batches split over the ranks."""
        self.ranks = r = Ranks()
        self.rank, self.world_size, self.device = r.rank, r.world_size, r.device
        self.distributed, self.is_main = r.distributed, r.is_main
        self.batch_per_rank = r.per_rank("training.batch_size", batch_size)
        self.eval_batch_per_rank = r.per_rank("eval.batch_size", eval_batch_size)
        self.accum = grad_accum
        if self.batch_per_rank % grad_accum:
            raise ConfigError(f"training.grad_accum={grad_accum} does not split the batch of "
                              f"{self.batch_per_rank} per rank into equal micro-batches: use "
                              f"a divisor of {self.batch_per_rank}")
        r.connect()
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)

    @param("logging.tensorboard")
    @param("logging.wandb")
    def check_trackers(self, tensorboard, wandb):
        """A tracker asked for is installed (train/trackers.py), before any work."""
        trackers.check_installed(tensorboard, wandb)

    @param("model.variant")
    @param("model.img_size")
    def check_datasets(self, variant, img_size):
        """The model fits the image size; every input file is usable (loaders.check_dataset_files)."""
        try:
            patch = vit.decode_variant(variant)["patch_size"]
        except ValueError as e:
            raise ConfigError(f"model.variant: {e}") from None
        if img_size <= 0 or img_size % patch:
            raise ConfigError(f"model.img_size={img_size} must be a positive multiple of the "
                              f"patch size {patch} of model.variant={variant}")
        self.sidecars = loaders.check_dataset_files(self.world_size, warn=self.is_main)
        self.classes = self.sidecars["train"][1]["classes"]
        self.num_classes = len(self.classes)
        self.n_train = self.sidecars["train"][1]["num_images"]

    @param("data.train_dataset")
    @param("data.num_workers")
    @param("data.in_memory")
    @param("model.img_size")
    @param("augment.crop_area_min")
    @param("augment.flip")
    @param("augment.randaug_layers")
    @param("augment.randaug_magnitude")
    @param("augment.randaug_fixed")
    @param("augment.mixup_alpha")
    @param("augment.mix_on_device")
    @param("augment.where")
    @param("training.seed")
    @param("training.epochs")
    @param("training.batch_size")
    @param("training.max_steps")
    def create_train_loader(self, train_dataset, num_workers, in_memory, img_size,
                            crop_area_min, flip, randaug_layers, randaug_magnitude,
                            randaug_fixed, mixup_alpha, mix_on_device, where, seed, epochs,
                            batch_size, max_steps):
        """The reference's train pipeline (rand_augment.py), one Loader for the whole run."""
        self.num_workers = num_workers or default_loader_threads()
        self.clock = ffcv_ops.AugmentClock(seed, self.accum)
        on_device = where == "device" or mix_on_device == "on" or (
            mix_on_device == "auto" and self.device.type == "cuda")
        options = dict(res=img_size, flip=flip, fixed=randaug_fixed,
                       randaug=(randaug_layers, randaug_magnitude) if randaug_layers else None,
                       mixup_alpha=mixup_alpha, num_classes=self.num_classes,
                       crop_area=(crop_area_min, 1.0))
        if where == "device":   # the bytes go to the device, decoded and augmented there
            from vit_speedrun.pp.device import ffcv_ops as device_ops
            pipes = device_ops.device_train_pipelines(self.clock, self.device, train_dataset,
                                                      **options)
        else:
            pipes = ffcv_ops.train_pipelines(self.clock, mix_on_device=on_device, **options)
        self.train_images_nhwc = not on_device
        self.train_loader = loaders.train_loader(
            train_dataset, pipes, self.clock, self.device, rank=self.rank,
            world_size=self.world_size, distributed=self.distributed,
            batch_size=self.batch_per_rank // self.accum, num_workers=self.num_workers,
            in_memory=in_memory, accum=self.accum,
            seed=seed, mix_on_device=on_device, mixup_alpha=mixup_alpha,
            on_device_already=where == "device")
        self.steps_per_epoch = len(self.train_loader) // self.accum
        if self.steps_per_epoch == 0:
            raise ConfigError(f"training.batch_size={batch_size} is larger than the "
                              f"{self.n_train} images of {train_dataset}")
        self.total_steps = max(1, round(epochs * self.n_train / batch_size))
        self.stop_step = min(self.total_steps, max_steps) if max_steps > 0 else self.total_steps

    @param("data.in_memory")
    @param("data.real")
    @param("model.img_size")
    @param("eval.crop_ratio")
    def create_eval_loaders(self, in_memory, real, img_size, crop_ratio):
        """The eval sets' loaders (train/evaluate.py: big_vision's eval preprocessing, this rank's
        shard of each set)."""
        self.eval_loaders = evaluate.eval_loaders(
            self.sidecars, self.device, self.rank, self.world_size, self.eval_batch_per_rank,
            self.num_workers, in_memory, real, img_size, crop_ratio)

    @param("model.variant")
    @param("model.img_size")
    @param("model.pool_type")
    @param("model.posemb")
    @param("model.rep_size")
    @param("model.head_zeroinit")
    @param("training.compile")
    @param("training.compile_mode")
    @param("training.precision")
    @param("logging.peak_tflops")
    def create_model(self, variant, img_size, pool_type, posemb, rep_size, head_zeroinit,
                     compile, compile_mode, precision, peak_tflops):
        """ViT on the device; torch.compile (default on GPU), then DDP across the ranks."""
        self.raw_model = vit.ViT(variant, num_classes=self.num_classes, pool_type=pool_type,
                                 posemb=posemb, rep_size=rep_size, head_zeroinit=head_zeroinit,
                                 img_size=img_size).to(self.device)
        self.flops_per_image = vit.flops_per_image(self.raw_model, training=True)
        self.compiled = compile == "on" or (compile == "auto" and self.device.type == "cuda")
        model = compile_model(self.raw_model, compile_mode) if self.compiled else self.raw_model
        self.peak_tflops, self.peak_source = report.peak_source(
            self.device, torch.bfloat16 if precision == "bf16" else torch.float32, peak_tflops)
        self.model = wrap_ddp(model, self.device) if self.distributed else model

    @param("optimizer.lr")
    @param("optimizer.weight_decay")
    @param("optimizer.beta1")
    @param("optimizer.beta2")
    @param("optimizer.eps")
    @param("optimizer.impl")
    def create_optimizer(self, lr, weight_decay, beta1, beta2, eps, impl):
        self.optimizer = build_optimizer(self.raw_model, lr, weight_decay, (beta1, beta2), eps,
                                         impl, self.device.type)
        self.params = [p for p in self.raw_model.parameters() if p.requires_grad]
        self.step = 0
        self.train_time = 0.0  # seconds in training steps, summed over resumed sessions

    @param("logging.folder")
    def resume_from_checkpoint(self, folder):
        """If folder/checkpoint.pt exists, continue from it (checkpoints.resume checks it
        first): weights, optimizer, step (which fixes the loader position), RNG states."""
        self.folder = Path(folder)
        self.checkpoint_path = self.folder / checkpoints.CURRENT
        try:
            ckpt, warnings = checkpoints.resume(self.folder, self.raw_model, self.optimizer,
                                                self.config_dict(), self.world_size, self.device)
        except checkpoints.CheckpointError as e:
            raise ConfigError(str(e)) from None
        self.resumed_from = None if ckpt is None else ckpt["step"]
        self.carried_window = None if ckpt is None else ckpt.get("log_window")
        if ckpt is not None:
            self.step, self.train_time = ckpt["step"], ckpt["train_time"]
        for warning in warnings if self.is_main else []:
            print(f"warning: {warning}", file=sys.stderr)

    def config_dict(self):
        return {".".join(path): self.config[path] for path in self.config.entries
                if path[0] in SECTIONS}

    @param("logging.progress")
    @param("model.variant")
    @param("model.img_size")
    @param("training.precision")
    @param("optimizer.lr")
    @param("optimizer.warmup_steps")
    @param("logging.tensorboard")
    @param("logging.wandb")
    @param("logging.wandb_project")
    @param("logging.wandb_name")
    def initialize_logger(self, progress, variant, img_size, precision, lr, warmup_steps,
                          tensorboard, wandb, wandb_project, wandb_name):
        """The run's folder and console (report.RunLog) and, on rank 0, the trackers asked
        for (train/trackers.py); rank 0 prints the plan of the run and a warning if it ends
        inside the warmup."""
        config = self.config_dict()
        sinks = trackers.open_trackers(
            self.folder, config, self.step, tensorboard=tensorboard, wandb=wandb,
            wandb_project=wandb_project, wandb_name=wandb_name) if self.is_main else []
        self.run_log = report.RunLog(self.folder, config, self.step, self.stop_step,
                                     self.is_main, progress, sinks)
        if self.is_main:
            n_params = sum(p.numel() for p in self.params)
            print(f"ViT-{variant} at {img_size}px: {n_params:,} parameters, "
                  f"{self.flops_per_image / 1e9:.3f} GFLOP per training image | "
                  f"{self.world_size} rank(s) on {self.device.type}, batch {self.batch_per_rank}"
                  f"/rank, {precision}, compile {'on' if self.compiled else 'off'} | "
                  f"{self.n_train:,} train images, {self.num_classes} classes, "
                  f"{self.steps_per_epoch} steps/epoch, {self.total_steps:,} steps"
                  + (f", stopping at {self.stop_step:,}" if self.stop_step < self.total_steps else "")
                  + (f" | resuming at step {self.step:,}" if self.resumed_from is not None else "")
                  + f" | logging to {self.folder}", flush=True)
            if warmup_steps >= self.stop_step:
                cause = (f"training.max_steps={self.stop_step:,}" if self.stop_step < self.total_steps
                         else f"training.epochs={self.config['training.epochs']:g} of "
                              f"{self.n_train:,} images")
                print(f"warning: this run ends at step {self.stop_step:,} ({cause}), before its "
                      f"warmup of optimizer.warmup_steps={warmup_steps:,} steps does: the "
                      f"learning rate never reaches optimizer.lr={lr:g} (at most "
                      f"{lr * schedule(self.stop_step - 1, self.total_steps, warmup_steps):.3g})."
                      f" Scale optimizer.warmup_steps with the run (the recipe warms up over 9% "
                      f"of its steps).", file=sys.stderr, flush=True)


class Trainer(Run):
    """Trains a Run: the loop, one optimizer step, and what comes between steps (the log,
    evals, checkpoints, the SIGTERM and non-finite stops, the summary at the end). The
    methods below come in the order they run."""

    @param("logging.log_every")
    @param("logging.checkpoint_every")
    @param("eval.every")
    def train(self, log_every, checkpoint_every, every):
        """The loop: epochs of batches from the saved position; logs, evals, checkpoints and
        the SIGTERM check between steps. Returns the exit code."""
        self.sigterm = False
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        self.eval_time = 0.0
        self.session_first_step, self.last_eval_step = self.step, None
        self.speed = report.SpeedWindows(self.device, self.train_time)
        window = self.carried_window  # a log window cut by SIGTERM: same ranks, carried on
        if window is not None and len(window["sums"]) == self.world_size:
            self.speed.carry_in(window["sums"][self.rank], window["steps"])
            self.carried_window = None
        self.host_lead = HostLead(self.device)
        self.probe, self.warned_stuck = None, False
        try:
            while self.step < self.stop_step:
                epoch, first_step = divmod(self.step, self.steps_per_epoch)
                batches = loaders.epoch_iterator(self.train_loader, self.clock, epoch,
                                                 first_step * self.accum)
                try:
                    while self.step < self.stop_step:
                        batch = self.speed.fetch(batches, self.host_lead)
                        if batch is None:
                            loaders.raise_if_failed(batches)
                            break
                        self.train_step(batch, batches)
                        self.step += 1
                        if self.step == self.session_first_step + 1:
                            self.frames_after_first = report.compiled_frames()
                        self.run_log.step_done()
                        stopping = self.ranks.any(self.sigterm)  # all stop at one step
                        at_end = self.step == self.stop_step
                        do_eval = (at_end or every and self.step % every == 0) and not stopping
                        do_save = stopping or at_end or (checkpoint_every and
                                                         self.step % checkpoint_every == 0)
                        if self.step % log_every == 0 or at_end or do_eval or (
                                do_save and not stopping):
                            self.log_train()  # also the non-finite check, before any save
                        elif stopping:  # the window goes into the checkpoint, unlogged
                            self.speed.close()
                            self.window_loss()
                        if do_eval:
                            self.evaluate()  # a non-finite eval loss stops before the save
                        if do_save:
                            self.save_checkpoint()
                        if stopping:
                            self.run_log.print(f"SIGTERM: checkpoint written at step "
                                               f"{self.step}; run the same command to resume")
                            return EXIT_SIGTERM
                finally:
                    loaders.stop_iterator(batches)
            self.finish()
            return EXIT_OK
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.run_log.close()

    def _on_sigterm(self, signum, frame):
        self.sigterm = True

    @param("optimizer.lr")
    @param("optimizer.warmup_steps")
    @param("optimizer.grad_clip_norm")
    @param("training.precision")
    @param("debug.nonfinite_at_step")
    def train_step(self, batch, batches, lr, warmup_steps, grad_clip_norm, precision,
                   nonfinite_at_step):
        """One AdamW step at lr * s(step) on the loader's batch, and with training.grad_accum
        = k on the k - 1 that follow it in `batches` (each used before the next is asked
        for: the loader reuses their memory)."""
        self.current_lr = lr * schedule(self.step, self.total_steps, warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.current_lr

        def nchw(images):   # NHWC -> NCHW (a channels-last view) unless already NCHW
            return images.permute(0, 3, 1, 2) if self.train_images_nhwc else images

        def prepared(images, targets):
            images = nchw(images)
            if self.step == nonfinite_at_step:
                images = images * float("nan")
            return images, targets

        if self.probe is None:  # a few real images: checkpoints.nonfinite runs the model on them
            self.probe = nchw(batch[0])[:8].detach().clone()
            if self.resumed_from is not None:
                self.check_resumed_state(precision)
        if self.accum == 1:
            loss, grad_norm = optimization_step(self.model, self.optimizer, self.params,
                                                *prepared(*batch), precision, grad_clip_norm)
        else:
            micro = (prepared(*b) for b in loaders.micro_batches(batch, batches, self.accum,
                                                                  self.step + 1))
            loss, grad_norm = accumulation_step(self.model, self.optimizer, self.params, micro,
                                                self.accum, precision, grad_clip_norm)
        self.speed.add(loss, grad_norm)

    def check_resumed_state(self, precision):
        """Before the first update of a resumed run: the checkpoint's weights give finite
        outputs on real images (one written before that was checked may not)."""
        bad = checkpoints.nonfinite(self.raw_model, self.optimizer, self.probe, precision)
        if self.ranks.any(bad):
            raise ConfigError(f"{self.checkpoint_path} (step {self.step:,}) cannot be resumed: "
                              f"non-finite values in {', '.join(bad[:3]) or 'another rank'}. "
                              + checkpoints.go_back(self.folder))

    @param("optimizer.warmup_steps")
    def log_train(self, warmup_steps):
        """Every log_every steps: mean loss over the ranks and steps, lr, speed; stop on a
        non-finite loss before anything else is written; say so when the loss is still
        ln(num_classes) (uniform predictions: not learning) after STUCK_STEPS steps."""
        w = self.speed
        if w.steps == 0:
            return
        seconds = w.close()
        loss = self.window_loss()
        record = {"step": self.step, "epoch": self.epochs(self.step),
                  "train_loss": loss, "lr": self.current_lr,
                  "grad_norm": w.grad_norm.item() / w.steps,
                  "img_per_s": w.timed_steps * self.batch_per_rank * self.world_size / seconds,
                  "data_wait": w.data_wait / seconds, "gpu_wait": w.gpu_wait / seconds,
                  "train_time_s": w.train_time}
        w.reset()
        uniform = math.log(self.num_classes)
        stuck = abs(loss - uniform) < 1e-3
        self.run_log.show(record, stuck_at=self.num_classes if stuck else None)
        if stuck and self.step >= STUCK_STEPS and not self.warned_stuck:
            self.warned_stuck = True
            self.run_log.print(
                f"warning: the training loss is still ln({self.num_classes}) = {uniform:.4f} at "
                f"step {self.step:,}: the model predicts every class alike, it is not learning "
                f"yet (lr now {self.current_lr:.3g}, warmup {warmup_steps:,} steps). If it stays "
                f"there, check optimizer.lr and the data.")
        self.run_log.write(record)

    def window_loss(self):
        """The mean loss of the log window over its steps and the ranks; raises NonFinite
        (before anything is logged or saved) when a step's loss was not finite."""
        w = self.speed
        stats = self.ranks.sum(torch.stack([w.loss, w.nonfinite.float()]))
        loss = stats[0].item() / (w.steps * self.world_size)
        if stats[1].item() > 0 or not math.isfinite(loss):
            raise self._nonfinite(f"non-finite training loss ({loss}) between steps "
                                  f"{self.step - w.steps} and {self.step}")
        return loss

    def epochs(self, step):
        """The one definition of epochs, for the log and the summary (report.epochs_done)."""
        return report.epochs_done(step, self.batch_per_rank * self.world_size, self.n_train)

    @param("training.precision")
    @torch.no_grad()
    def evaluate(self, precision):
        """Top-1 on every eval set (ReaL from the val pass), reduced over ranks by torchmetrics.
        A non-finite eval loss means the weights are broken: logged (as null), then a stop."""
        if self.last_eval_step == self.step or not self.eval_loaders:
            return
        start = time.perf_counter()
        record = {"step": self.step, "epoch": self.epochs(self.step),
                  **evaluate.evaluate(self.raw_model, self.eval_loaders, self.device,
                                      self.num_classes, precision)}
        self.last_eval_step = self.step
        self.eval_time += time.perf_counter() - start
        record["eval_time_s"] = time.perf_counter() - start
        self.run_log.print("eval at step {:,}: {}".format(self.step, ", ".join(
            f"{k[:-5]} {v:.2%}" for k, v in record.items() if k.endswith("_top1"))))
        self.run_log.write(record)
        bad = [k for k, v in record.items() if k.endswith("_loss") and not math.isfinite(v)]
        if bad:
            raise self._nonfinite(f"non-finite eval loss at step {self.step} ({', '.join(bad)})")

    @param("training.precision")
    def save_checkpoint(self, precision):
        """Check the state on every rank (checkpoints.nonfinite), then rank 0 writes it
        (checkpoints.save: checkpoint.pt, the one before as checkpoint.prev.pt)."""
        bad = checkpoints.nonfinite(self.raw_model, self.optimizer, self.probe, precision)
        if self.ranks.any(bad):
            raise self._nonfinite(f"non-finite values at step {self.step} in "
                                  + (", ".join(bad[:3]) or "another rank's state"))
        sums, steps = self.speed.open_window()  # steps > 0: stopped by SIGTERM between logs
        sums = self.ranks.gather(sums) if steps else None  # each rank carries its own on
        if self.is_main:
            checkpoints.save(checkpoints.capture(
                self.raw_model, self.optimizer, step=self.step,
                steps_per_epoch=self.steps_per_epoch, world_size=self.world_size,
                train_time=self.speed.train_time, config=self.config_dict(),
                device=self.device, classes=self.classes,
                log_window={"steps": steps, "sums": sums} if steps else None),
                self.folder)
        self.ranks.barrier()

    def _nonfinite(self, what):
        return NonFinite(f"{what}. Stopped; nothing was saved from this state. "
                         + checkpoints.where_to_resume(self.folder, self.config["optimizer.lr"],
                                                       self.config["training.precision"]))

    @param("model.variant")
    @param("model.img_size")
    def finish(self, variant, img_size):
        """curves.png and the summary (train/report.py), printed and as summary.json."""
        batch = self.batch_per_rank * self.world_size
        steps = self.step - self.session_first_step
        self.recompiles = report.compiled_frames() - self.frames_after_first
        self.run_log.finish(
            step=self.step, total_steps=self.total_steps,
            global_batch=batch, n_train=self.n_train, session_steps=steps,
            wall_s=time.perf_counter() - self.started,
            session_train_s=self.speed.session_time, session_eval_s=self.eval_time,
            train_time_s=self.speed.train_time, img_s=self.speed.img_s(batch, steps),
            devices=self.world_size,
            device=torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            flops_per_image=self.flops_per_image, peak_tflops=self.peak_tflops,
            peak_source=self.peak_source, recompiles=self.recompiles if self.compiled else None,
            variant=variant, img_size=img_size)


def main(argv=None):
    """Parse, validate, train. Returns the exit code (see the module docstring)."""
    started = time.perf_counter()
    try:
        config = parse_config(argv)
        trainer = Trainer(config, started)
        if trainer.step >= trainer.stop_step:
            trainer.run_log.print(f"{trainer.checkpoint_path} is at step {trainer.step:,}: "
                                  f"nothing left to train (stop step {trainer.stop_step:,})")
            trainer.run_log.close()
            return EXIT_OK
        return trainer.train()
    except ConfigError as e:
        print(f"train_vit.py: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except NonFinite as e:
        print(f"train_vit.py: error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    finally:
        Ranks.close()


if __name__ == "__main__":
    sys.exit(main())
