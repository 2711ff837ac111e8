"""Train a plain ViT on ImageNet-1k the way big_vision's `configs/vit_s16_i1k.py` does.

"Better plain ViT baselines for ImageNet-1k" (ViT-S/16: 76.5% top-1 after 90 epochs, 6 h 30
on a TPUv3-8), with FFCV loaders. ../shared/RECIPE.md is the spec; configs/ holds the runs.

    torchrun --nproc_per_node=8 train_vit.py --config-file configs/vit_s16_90ep.yaml
    python train_vit.py --config-file configs/demo.yaml --logging.folder=runs/demo
    python train_vit.py --help        # every setting, with its default

Several nodes: the same command on every node with torchrun's rendezvous flags
(`--nnodes=2 --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT`), logging.folder on a shared
filesystem. training.batch_size is the GLOBAL batch, split evenly over the ranks.

Written to logging.folder (rank 0): config.json, log.jsonl (one JSON object per line: train
metrics every logging.log_every steps, evals), checkpoint.pt (every
logging.checkpoint_every steps and at the end; written to a temporary name, then renamed),
curves.png and summary.json at the end. Running the same command with the same folder
resumes from checkpoint.pt, mid-epoch included, and ends bit-identical (on CPU) to a run
that was never stopped.

Exit codes: 0 done (or max_steps reached); 2 configuration error (nothing was trained);
1 non-finite loss (the last good checkpoint is kept); 143 (= 128 + SIGTERM) after a
SIGTERM: a checkpoint was written at the next step boundary, run the same command again
to resume (torchrun --max-restarts does so by itself).
"""
import os

# The train loader's background thread and an eval loader may run numba parallel code at
# the same time; numba's default 'workqueue' layer aborts on that, tbb and omp do not.
os.environ.setdefault("NUMBA_THREADING_LAYER", "threadsafe")

import argparse  # noqa: E402
import datetime
import difflib
import json
import math
import queue
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchmetrics
import yaml
from fastargs import Param, Section, get_current_config
from fastargs.decorators import param
from fastargs.validation import And, Checker, InRange, OneOf
from ffcv.fields.basics import IntDecoder
from ffcv.fields.ndarray import NDArrayDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.transforms import ToDevice, ToTensor
from ffcv.traversal_order.base import TraversalOrder
from torch.utils.data import DistributedSampler
from tqdm import tqdm

import rand_augment
import vit
from write_ffcv import ConversionError, read_sidecar


class Flag(Checker):
    """true/false, yes/no, on/off, 1/0. (fastargs' own bool checker reads 'false' as True.)"""
    def check(self, value):
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)

    def help(self):
        return "a boolean (true/false or 1/0)"


class RepSize(Checker):
    """big_vision's rep_size: true (pre-logits as wide as the model), false (none) or an int."""
    def check(self, value):
        try:
            return Flag().check(value)
        except ValueError:
            if int(value) > 0:
                return int(value)
            raise

    def help(self):
        return "true, false or a positive int"


Section("data", "datasets written by write_ffcv.py (X.beton with its X.beton.json sidecar)").params(
    train_dataset=Param(str, "train split .beton (the 99% of ImageNet train)", required=True),
    minival_dataset=Param(str, "minival split .beton; '' = no minival eval", default=""),
    val_dataset=Param(str, "ImageNet val .beton; '' = no val eval", default=""),
    real=Param(Flag(), "also score ReaL with the val .beton's 'real' field", default=False),
    v2_dataset=Param(str, "ImageNet-v2 .beton; '' = no v2 eval", default=""),
    num_workers=Param(And(int, InRange(min=0)),
                      "decoding threads per rank; 0 = the cores of this rank", default=0),
    in_memory=Param(Flag(), "let the OS page cache hold the .beton (ffcv os_cache)", default=True),
)
Section("model", "big_vision ViT (vit.py)").params(
    variant=Param(str, "'<name>/<patch>', e.g. S/16; names in vit.VARIANTS", default="S/16"),
    img_size=Param(And(int, InRange(min=1)), "train crop size and eval crop size (pixels)",
                   default=224),
    pool_type=Param(OneOf(["gap", "tok"]), "global average pool or [cls] token", default="gap"),
    posemb=Param(OneOf(["sincos2d", "learn"]), "fixed 2-D sin-cos or learned", default="sincos2d"),
    rep_size=Param(RepSize(), "tanh pre-logits layer: true, false (linear head) or width",
                   default=True),
    head_zeroinit=Param(Flag(), "zero-initialised head kernel", default=True),
)
Section("augment", "train preprocessing (rand_augment.py); eval has its own crop").params(
    crop_area_min=Param(And(float, InRange(1e-6, 1)), "inception crop: smallest area fraction",
                        default=0.05),
    flip=Param(Flag(), "random horizontal flip, p = 0.5", default=True),
    randaug_layers=Param(And(int, InRange(min=0)), "RandAugment ops per image; 0 = RandAugment off",
                         default=2),
    randaug_magnitude=Param(And(int, InRange(0, 10)), "RandAugment level (max 10)", default=10),
    randaug_fixed=Param(Flag(), "fix the reference's Contrast/Solarize quirks", default=False),
    mixup_alpha=Param(And(float, InRange(min=0)), "mixup a ~ Beta(alpha, alpha); 0 = mixup off",
                      default=0.2),
    mix_on_device=Param(OneOf(["auto", "on", "off"]), "normalise + mix images on the device "
                        "(uint8 host->device copy, same numbers); auto = on GPU", default="auto"),
)
Section("optimizer", "AdamW, decoupled decay, global-norm clipping, warmup + cosine").params(
    lr=Param(And(float, InRange(min=0)), "peak learning rate (big_vision config.lr)", default=1e-3),
    weight_decay=Param(And(float, InRange(min=0)),
                       "torch AdamW decay: the step decays w by lr*s(t)*this", default=0.1),
    beta1=Param(float, "Adam b1", default=0.9),
    beta2=Param(float, "Adam b2", default=0.999),
    eps=Param(float, "Adam eps", default=1e-8),
    grad_clip_norm=Param(And(float, InRange(min=0)),
                         "clip the global gradient norm to this; 0 = off", default=1.0),
    warmup_steps=Param(And(int, InRange(min=0)),
                       "linear warmup from exactly 0 over this many steps", default=10_000),
    impl=Param(OneOf(["auto", "fused", "foreach", "forloop"]),
               "torch AdamW kernel; auto = fused on GPU, foreach on CPU", default="auto"),
)
Section("training", "the run").params(
    epochs=Param(And(float, InRange(min=1e-9)),
                 "epochs; steps = round(epochs * n_train / batch_size)", default=90),
    batch_size=Param(And(int, InRange(min=1)), "GLOBAL batch, split over the ranks", default=1024),
    max_steps=Param(And(int, InRange(min=0)),
                    "stop after this step (schedule unchanged); 0 = run to the end",
                    default=0),
    seed=Param(int, "model init, data order and augmentation seed", default=0),
    precision=Param(OneOf(["bf16", "fp32"]), "autocast dtype (CPU too)", default="bf16"),
    compile=Param(OneOf(["auto", "on", "off"]), "torch.compile; auto = on GPU only",
                  default="auto"),
)
Section("eval", "top-1 on minival, val, ReaL and v2").params(
    every=Param(And(int, InRange(min=0)),
                "eval every this many steps (and at the end); 0 = only at the end",
                default=2500),
    batch_size=Param(And(int, InRange(min=1)), "GLOBAL eval batch", default=1024),
    crop_ratio=Param(And(float, InRange(1e-6, 1)),
                     "centre crop side / shorter side (224/256: resize 256, crop 224)",
                     default=224 / 256),
)
Section("logging", "what rank 0 writes and shows").params(
    folder=Param(str, "output folder; a checkpoint there is resumed", required=True),
    log_every=Param(And(int, InRange(min=1)),
                    "log train metrics (and check the loss is finite) every N steps",
                    default=50),
    checkpoint_every=Param(And(int, InRange(min=0)),
                           "checkpoint every N steps (and at the end); 0 = end only",
                           default=1000),
    progress=Param(Flag(), "tqdm progress bar", default=True),
    peak_tflops=Param(And(float, InRange(min=0)),
                      "per-device peak TFLOP/s for MFU; 0 = known GPUs, else n/a",
                      default=0.0),
)
Section("debug", "fault injection for tests").params(
    nonfinite_at_step=Param(int, "make the inputs NaN at this step (tests the guard); -1 = off",
                            default=-1),
)

# TPUv3-8 reference (paper, section 3): 90 epochs of 1,268,355 images in 6 h 30; 300 < 24 h.
IMAGENET_TRAIN = 1_268_355
TPU_90EP_S, TPU_300EP_S = 6.5 * 3600, 24 * 3600
# Dense bf16 peak FLOP/s for MFU, matched against torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}
SECTIONS = ("data", "model", "augment", "optimizer", "training", "eval", "logging", "debug")
EXIT_OK, EXIT_NONFINITE, EXIT_CONFIG, EXIT_SIGTERM = 0, 1, 2, 128 + signal.SIGTERM


# Every ffcv Loader jits its own numba dispatchers of the same functions (ffcv's imdecode...).
# When an old one is garbage-collected while a new Loader compiles in its thread, numba 0.68
# raises KeyError there. Loaders made in this process therefore live as long as it does
# (one run = a few loaders; it matters when main() runs several times, as in the tests).
_LOADERS = []


def _loader_thread_died(args, default_hook=threading.excepthook):
    """threading.excepthook: an ffcv epoch thread that raises never puts its end marker,
    so its consumer would wait forever. Mark it failed and wake the consumer."""
    default_hook(args)
    if isinstance(args.thread, EpochIterator):
        args.thread.failed = args.exc_value
        args.thread.output_queue.put(None)


threading.excepthook = _loader_thread_died


def _raise_if_failed(epoch_iterator):
    """Call when an ffcv epoch ended: raises if it ended because its thread died."""
    if getattr(epoch_iterator, "failed", None) is not None:
        raise RuntimeError("the ffcv loader thread failed (traceback above)") \
            from epoch_iterator.failed


def _batches(loader):
    """One epoch of an ffcv loader, raising if its thread died instead of ending early."""
    epoch_iterator = iter(loader)
    yield from epoch_iterator
    _raise_if_failed(epoch_iterator)


class ConfigError(Exception):
    """A setting or an input file is wrong; the message says which and what to do."""


class NonFiniteLoss(Exception):
    """The training loss became NaN or inf."""


def schedule(step, total_steps, warmup_steps):
    """big_vision's s(t): linear warmup from exactly 0, then cosine to 0 at total_steps."""
    warm = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def soft_xent(logits, targets):
    """Softmax cross-entropy against soft (mixup two-hot) targets, mean over the batch."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def build_optimizer(model, lr, weight_decay, betas, eps, impl, device_type):
    """torch AdamW over vit.param_groups: decay on kernels only, decoupled (w -= lr*s*wd*w)."""
    kind = {"auto": "fused" if device_type == "cuda" else "foreach"}.get(impl, impl)
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True},
             "forloop": {"foreach": False}}[kind]
    return torch.optim.AdamW(vit.param_groups(model, weight_decay), lr=lr, betas=betas,
                             eps=eps, **flags)


def clip_global_norm_(params, max_norm):
    """optax.clip_by_global_norm: g *= max_norm / ||g|| when ||g|| > max_norm. Returns ||g||."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if max_norm > 0:
        torch._foreach_mul_(grads, torch.clamp(max_norm / norm, max=1.0))
    return norm


def compile_model(model):
    """torch.compile as the trainer uses it on GPU (default mode; benchmark.py shares it)."""
    return torch.compile(model)


def optimization_step(model, optimizer, params, images_nchw, targets, precision, grad_clip_norm):
    """Forward (bf16 autocast unless precision='fp32'), soft-target xent, backward, global
    norm clip, AdamW step. The optimizer's lr is set by the caller. Returns detached
    (loss, grad_norm); no host sync."""
    model.train()
    device_type = images_nchw.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(images_nchw)
    loss = soft_xent(logits, targets)
    loss.backward()
    grad_norm = clip_global_norm_(params, grad_clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm.detach()


class ResumableOrder(TraversalOrder):
    """ffcv's RANDOM order in distributed mode (DistributedSampler, shuffle, padded to the
    world size; seed + epoch), cut to whole batches (ffcv 1.0.2 ignores drop_last). A resumed
    epoch starts later through rand_augment.epoch_iterator, which skips batches without
    decoding them. ffcv builds a custom order by calling it with the Loader. The rank and
    world size are explicit, so one process needs no process group."""

    def __init__(self, rank, world_size):
        self.rank, self.world_size = rank, world_size

    def __call__(self, loader):
        TraversalOrder.__init__(self, loader)
        return self

    def sample_order(self, epoch):
        sampler = DistributedSampler(self.indices, num_replicas=self.world_size, rank=self.rank,
                                     shuffle=True, seed=self.seed, drop_last=False)
        sampler.set_epoch(epoch)
        order = self.indices[np.fromiter(iter(sampler), dtype=np.int64)]
        batch = self.loader.batch_size
        return order[:len(order) // batch * batch]


class ReaLAccuracy(torchmetrics.Metric):
    """ReaL top-1: correct if the argmax is in the image's label set (rows padded with -1);
    images with an empty set are left out."""
    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds, real):
        real = real.long()
        scored = (real >= 0).any(dim=1)
        self.correct += ((real == preds[:, None]).any(dim=1) & scored).sum()
        self.total += scored.sum()

    def compute(self):
        return self.correct.float() / self.total if self.total > 0 else torch.tensor(float("nan"))


def parse_config(argv=None):
    """fastargs from --config-file and --section.name=value flags, then the checks fastargs
    skips: keys no section declares (a typo would be silently ignored) and missing values."""
    config = get_current_config()
    config.content.clear()  # main() may run more than once in a process (tests)
    saved_argv = sys.argv
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        config.augment_argparse(parser)  # reads the files too
        files = parser.parse_args().config_file
        config.collect_argparse_args(parser)
    except FileNotFoundError as e:
        raise ConfigError(f"--config-file {e.filename}: no such file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config-file: not valid YAML: {e}") from None
    finally:
        sys.argv = saved_argv
    known = {".".join(path) for path in config.entries if path[0] in SECTIONS}
    for fname in files:
        content = yaml.safe_load(Path(fname).read_text())
        unknown = [key for key in _flatten(content or {}) if key not in known]
        if unknown:
            hints = [f"{k} (did you mean {', '.join(difflib.get_close_matches(k, known, 2)) or '?'})"
                     for k in unknown]
            raise ConfigError(f"{fname}: unknown settings {', '.join(hints)}. "
                              f"`python train_vit.py --help` lists them all.")
    errors = {p: e for p, e in config.validate(mode="errordict").items() if p[0] in SECTIONS}
    if errors:
        lines = [f"{'.'.join(p)}: " + ("required, not set" if type(e).__name__ == "MissingValueError"
                 else f"got {config.content.get(p)!r}, expected {config.entries[p].checker.help()}")
                 for p, e in errors.items()]
        raise ConfigError("bad settings:\n  " + "\n  ".join(lines))
    return config


def _flatten(tree, prefix=""):
    if not isinstance(tree, dict):
        raise ConfigError(f"config file: expected 'section: {{name: value}}', got {tree!r}")
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


class Trainer:
    """One training run; the methods below come in the order they run."""

    def __init__(self, config, started=None):
        self.config = config
        self.started = time.perf_counter() if started is None else started  # wall-clock origin
        self.setup_distributed()
        self.check_datasets()
        self.create_train_loader()
        self.create_eval_loaders()
        self.create_model()
        self.create_optimizer()
        self.resume_from_checkpoint()
        self.initialize_logger()

    @param("training.batch_size")
    @param("eval.batch_size", "eval_batch_size")
    @param("training.seed")
    def setup_distributed(self, batch_size, eval_batch_size, seed):
        """torchrun's env vars -> process group (nccl on GPU, gloo on CPU); 1 process without."""
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        for name, value in (("training.batch_size", batch_size), ("eval.batch_size", eval_batch_size)):
            if value <= 0 or value % self.world_size:
                raise ConfigError(f"{name}={value} does not split evenly over {self.world_size} "
                                  f"ranks: use a positive multiple of {self.world_size}")
        self.batch_per_rank = batch_size // self.world_size
        self.eval_batch_per_rank = eval_batch_size // self.world_size
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        else:
            self.device = torch.device("cpu")
            # Denormal floats (tiny Adam moments and activations of the zero-initialised
            # head) slow x86 float math by 10x here; TPUs and GPU tensor cores flush them too.
            torch.set_flush_denormal(True)
        self.distributed = self.world_size > 1
        if self.distributed:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                    device_id=self.device if self.device.type == "cuda" else None)
            # The SIGTERM flag is agreed on every step over CPU (gloo): no GPU sync per step.
            self.cpu_group = (dist.new_group(backend="gloo") if self.device.type == "cuda"
                              else dist.group.WORLD)
        self.is_main = self.rank == 0
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)

    @param("data.train_dataset")
    @param("data.minival_dataset")
    @param("data.val_dataset")
    @param("data.real")
    @param("data.v2_dataset")
    @param("model.variant")
    @param("model.img_size")
    def check_datasets(self, train_dataset, minival_dataset, val_dataset, real, v2_dataset,
                       variant, img_size):
        """Every input exists, has its sidecar, and all splits share one class list."""
        try:
            patch = vit.decode_variant(variant)["patch_size"]
        except ValueError as e:
            raise ConfigError(f"model.variant: {e}") from None
        if img_size <= 0 or img_size % patch:
            raise ConfigError(f"model.img_size={img_size} must be a positive multiple of the "
                              f"patch size {patch} of model.variant={variant}")
        self.sidecars = {}
        for name, path in (("train", train_dataset), ("minival", minival_dataset),
                           ("val", val_dataset), ("v2", v2_dataset)):
            if not path:
                continue
            if not Path(path).is_file():
                raise ConfigError(f"data.{name}_dataset: {path} does not exist. Convert the "
                                  f"split with write_ffcv.py, or set data.{name}_dataset='' "
                                  f"to skip it")
            try:
                self.sidecars[name] = (path, read_sidecar(path))
            except (ConversionError, ValueError) as e:
                raise ConfigError(f"data.{name}_dataset: {e}") from None
        classes = self.sidecars["train"][1]["classes"]
        for name, (path, meta) in self.sidecars.items():
            if meta["classes"] != classes and meta["classes"] == [str(i) for i in range(len(classes))]:
                raise ConfigError(f"{path} names its classes 0..{len(classes) - 1}: convert it "
                                  f"again with write_ffcv.py --cfg.classes_from={train_dataset} "
                                  f"so that it carries the train set's class names")
            if meta["classes"] != classes:
                diff = sorted(set(meta["classes"]) ^ set(classes))[:5]
                raise ConfigError(
                    f"{path} has {len(meta['classes'])} classes, {train_dataset} has "
                    f"{len(classes)}, or they are in another order (first differences: {diff}). "
                    f"Convert every split from the same class folders with write_ffcv.py.")
            if meta["num_images"] < self.world_size:
                raise ConfigError(f"{path} holds {meta['num_images']} images, fewer than the "
                                  f"{self.world_size} ranks")
        if real and not (val_dataset and self.sidecars["val"][1].get("has_real")):
            raise ConfigError(f"data.real=true needs data.val_dataset written with ReaL labels "
                              f"(write_ffcv.py --cfg.split=val --cfg.real_labels=real.json); "
                              f"{val_dataset or 'no val set'} has none. Or set data.real=false")
        self.classes, self.num_classes = classes, len(classes)
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
    @param("training.seed")
    @param("training.epochs")
    @param("training.batch_size")
    @param("training.max_steps")
    def create_train_loader(self, train_dataset, num_workers, in_memory, img_size,
                            crop_area_min, flip, randaug_layers, randaug_magnitude,
                            randaug_fixed, mixup_alpha, mix_on_device, seed, epochs, batch_size,
                            max_steps):
        """The reference's train pipeline (rand_augment.py), one Loader for the whole run."""
        self.num_workers = num_workers or max(1, len(os.sched_getaffinity(0)) //
                                              int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        self.clock = rand_augment.AugmentClock(seed)
        on_device = mix_on_device == "on" or (mix_on_device == "auto" and self.device.type == "cuda")
        pipes = rand_augment.train_pipelines(
            self.clock, res=img_size, flip=flip, fixed=randaug_fixed,
            randaug=(randaug_layers, randaug_magnitude) if randaug_layers > 0 else None,
            mixup_alpha=mixup_alpha, num_classes=self.num_classes,
            crop_area=(crop_area_min, 1.0), mix_on_device=on_device)
        to_device = [ToTensor(), ToDevice(self.device, non_blocking=True)]
        # Images arrive float32 NHWC from the CPU pipeline, or NCHW from the device tail.
        image_tail = (rand_augment.device_tail(self.clock, self.device, mixup_alpha)
                      if on_device else to_device)
        self.train_images_nhwc = not on_device
        self.train_loader = Loader(
            train_dataset, batch_size=self.batch_per_rank, num_workers=self.num_workers,
            os_cache=in_memory, order=ResumableOrder(self.rank, self.world_size),
            distributed=self.distributed, seed=seed, drop_last=True,
            pipelines={"image": pipes["image"] + image_tail, "label": pipes["label"] + to_device})
        _LOADERS.append(self.train_loader)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"training.batch_size={batch_size} is larger than the "
                              f"{self.n_train} images of {train_dataset}")
        self.total_steps = max(1, round(epochs * self.n_train / batch_size))
        self.stop_step = min(self.total_steps, max_steps) if max_steps > 0 else self.total_steps

    @param("data.num_workers")
    @param("data.in_memory")
    @param("data.real")
    @param("model.img_size")
    @param("eval.crop_ratio")
    def create_eval_loaders(self, num_workers, in_memory, real, img_size, crop_ratio):
        """big_vision's decode|resize_small(round(img_size / crop_ratio))|central_crop(img_size)
        |value_range(-1, 1) (256 and 224 by default), TF's area resize bit for bit.
        Each rank scores a disjoint strided shard (no padding), so the reduced top-1 is exact."""
        to_device = [ToTensor(), ToDevice(self.device, non_blocking=True)]
        self.eval_loaders = {}
        for name in ("minival", "val", "v2"):
            if name not in self.sidecars:
                continue
            path, meta = self.sidecars[name]
            with_real = name == "val" and real
            pipelines = {
                "image": [rand_augment.EvalDecoder(img_size, round(img_size / crop_ratio)),
                          rand_augment.Normalize(), *to_device],
                "label": [IntDecoder(), *to_device],
                "real": [NDArrayDecoder(), *to_device] if with_real else None}
            self.eval_loaders[name] = with_real, Loader(
                path, batch_size=self.eval_batch_per_rank, num_workers=self.num_workers,
                os_cache=in_memory, order=OrderOption.SEQUENTIAL, drop_last=False,
                indices=np.arange(self.rank, meta["num_images"], self.world_size),
                pipelines=pipelines)
            _LOADERS.append(self.eval_loaders[name][1])

    @param("model.variant")
    @param("model.img_size")
    @param("model.pool_type")
    @param("model.posemb")
    @param("model.rep_size")
    @param("model.head_zeroinit")
    @param("training.compile")
    def create_model(self, variant, img_size, pool_type, posemb, rep_size, head_zeroinit,
                     compile):
        """ViT on the device; torch.compile (default on GPU), then DDP across the ranks."""
        self.raw_model = vit.ViT(variant, num_classes=self.num_classes, pool_type=pool_type,
                                 posemb=posemb, rep_size=rep_size, head_zeroinit=head_zeroinit,
                                 img_size=img_size).to(self.device)
        self.flops_per_image = vit.flops_per_image(self.raw_model, training=True)
        self.compiled = compile == "on" or (compile == "auto" and self.device.type == "cuda")
        model = compile_model(self.raw_model) if self.compiled else self.raw_model
        if self.distributed:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.model = model

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
        """If folder/checkpoint.pt exists, continue from it: weights, optimizer, step (which
        fixes the loader position: epoch and batch within it), RNG states."""
        self.folder = Path(folder)
        self.checkpoint_path = self.folder / "checkpoint.pt"
        self.resumed_from = None
        if not self.checkpoint_path.exists():
            return
        ckpt = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        self.raw_model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step, self.train_time = ckpt["step"], ckpt["train_time"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        np.random.set_state(("MT19937", ckpt["rng"]["numpy"].numpy().astype(np.uint32),
                             *ckpt["rng"]["numpy_rest"]))
        random.setstate((ckpt["rng"]["python"][0], tuple(ckpt["rng"]["python"][1]), None))
        if self.device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        self.resumed_from = self.step
        changed = {k: (v, ckpt["config"].get(k)) for k, v in self.config_dict().items()
                   if ckpt["config"].get(k) != v and not k.startswith(("logging.", "debug."))
                   and k not in ("training.max_steps", "data.num_workers")}
        if changed and self.is_main:
            print(f"warning: resuming {self.checkpoint_path} with changed settings "
                  f"(now, then): {changed}", file=sys.stderr)
        if ckpt["world_size"] != self.world_size and self.is_main:
            print(f"warning: the checkpoint was written with {ckpt['world_size']} ranks, this "
                  f"run has {self.world_size}: the data order differs from an unbroken run",
                  file=sys.stderr)

    def config_dict(self):
        return {".".join(path): self.config[path] for path in self.config.entries
                if path[0] in SECTIONS}

    @param("logging.progress")
    @param("model.variant")
    @param("model.img_size")
    @param("training.precision")
    def initialize_logger(self, progress, variant, img_size, precision):
        """Rank 0: the folder, config.json, log.jsonl (cut back to the resumed step), the
        plan of the run, and the progress bar."""
        self.log_path = self.folder / "log.jsonl"
        if self.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.folder / "config.json",
                          json.dumps(self.config_dict(), indent=2, sort_keys=True))
            kept = [line for line in _read_log(self.log_path) if line["step"] <= self.step]
            _write_atomic(self.log_path, "".join(json.dumps(x) + "\n" for x in kept))
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
        self.pbar = tqdm(total=self.stop_step, initial=self.step, unit="step", dynamic_ncols=True,
                         disable=not (progress and self.is_main))

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
        self.session_train_time, self.session_windows = 0.0, 0
        self.steady_steps, self.steady_time = 0, 0.0
        self._reset_window()
        try:
            while self.step < self.stop_step:
                epoch, first_batch = divmod(self.step, self.steps_per_epoch)
                batches = rand_augment.epoch_iterator(self.train_loader, self.clock, epoch,
                                                      first_batch)
                try:
                    while self.step < self.stop_step:
                        t0 = time.perf_counter()
                        batch = next(batches, None)
                        if batch is None:
                            _raise_if_failed(batches)
                            break
                        t1 = time.perf_counter()
                        self.train_step(*batch)
                        self.step += 1
                        self.pbar.update(1)
                        self.window_wait += t1 - t0
                        self.window_steps += 1
                        self.window_time += time.perf_counter() - t0
                        stopping = self._sigterm_agreed()
                        at_end = self.step == self.stop_step
                        do_eval = every and self.step % every == 0 and not stopping
                        do_save = stopping or at_end or (checkpoint_every and
                                                         self.step % checkpoint_every == 0)
                        if self.step % log_every == 0 or at_end or do_eval or do_save:
                            self.log_train()  # also the non-finite check, before any save
                        if do_eval:
                            self.evaluate()
                        if do_save:
                            self.save_checkpoint()
                        if stopping:
                            self._print(f"SIGTERM: checkpoint written at step {self.step}; "
                                        f"run the same command to resume")
                            return EXIT_SIGTERM
                finally:
                    _stop_iterator(batches)
            self.evaluate()
            self.finish()
            return EXIT_OK
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.pbar.close()

    def _on_sigterm(self, signum, frame):
        self.sigterm = True

    def _sigterm_agreed(self):
        """All ranks stop at the same step boundary if any of them got SIGTERM."""
        if not self.distributed:
            return self.sigterm
        flag = torch.tensor([int(self.sigterm)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return bool(flag.item())

    @param("optimizer.lr")
    @param("optimizer.warmup_steps")
    @param("optimizer.grad_clip_norm")
    @param("training.precision")
    @param("debug.nonfinite_at_step")
    def train_step(self, images, targets, lr, warmup_steps, grad_clip_norm, precision,
                   nonfinite_at_step):
        """One AdamW step at lr * s(step) on a NHWC float batch from the loader."""
        self.current_lr = lr * schedule(self.step, self.total_steps, warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.current_lr
        if self.train_images_nhwc:
            images = images.permute(0, 3, 1, 2)  # NHWC -> NCHW (a channels-last view)
        if self.step == nonfinite_at_step:
            images = images * float("nan")
        loss, grad_norm = optimization_step(self.model, self.optimizer, self.params, images,
                                            targets, precision, grad_clip_norm)
        self.window_loss += loss
        self.window_grad_norm += grad_norm
        self.window_nonfinite += (~torch.isfinite(loss)).int()

    def _reset_window(self):
        zero = torch.zeros((), device=self.device)
        self.window_loss, self.window_grad_norm, self.window_nonfinite = zero, zero.clone(), zero.int()
        self.window_steps, self.window_wait, self.window_time = 0, 0.0, 0.0

    def log_train(self):
        """Every log_every steps: mean loss over the ranks and steps, lr, speed; stop on a
        non-finite loss before anything else is written."""
        if self.window_steps == 0:
            return
        stats = torch.stack([self.window_loss, self.window_nonfinite.float()])
        if self.distributed:
            dist.all_reduce(stats)
        loss = stats[0].item() / (self.window_steps * self.world_size)
        if stats[1].item() > 0 or not math.isfinite(loss):
            raise NonFiniteLoss(
                f"non-finite training loss ({loss}) between steps {self.step - self.window_steps}"
                f" and {self.step}. Stopped; {self.checkpoint_path} keeps the last good state. "
                f"Lower optimizer.lr, check the data, or try training.precision=fp32.")
        self.train_time += self.window_time
        self.session_train_time += self.window_time
        if self.session_windows > 0:  # the first window pays for compilation: left out
            self.steady_steps += self.window_steps
            self.steady_time += self.window_time
        self.session_windows += 1
        images = self.window_steps * self.batch_per_rank * self.world_size
        record = {"step": self.step, "epoch": self.step / self.steps_per_epoch,
                  "train_loss": loss, "lr": self.current_lr,
                  "grad_norm": self.window_grad_norm.item() / self.window_steps,
                  "img_per_s": images / self.window_time,
                  "data_wait": self.window_wait / self.window_time,
                  "train_time_s": self.train_time}
        self._reset_window()
        self.pbar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}",
                              img_s=f"{record['img_per_s']:.0f}",
                              wait=f"{record['data_wait']:.0%}", refresh=False)
        self._log(record)

    @param("training.precision")
    @torch.no_grad()
    def evaluate(self, precision):
        """Top-1 on every eval set (ReaL from the val pass), reduced over ranks by torchmetrics."""
        if self.last_eval_step == self.step or not self.eval_loaders:
            return
        start = time.perf_counter()
        self.raw_model.eval()
        record = {"step": self.step, "epoch": self.step / self.steps_per_epoch}
        for name, (with_real, loader) in self.eval_loaders.items():
            top1 = torchmetrics.classification.MulticlassAccuracy(
                self.num_classes, average="micro").to(self.device)
            loss = torchmetrics.MeanMetric().to(self.device)
            real = ReaLAccuracy().to(self.device)
            for batch in _batches(loader):
                images, labels = batch[0].permute(0, 3, 1, 2), batch[1].view(-1).long()
                with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                    enabled=precision == "bf16"):
                    logits = self.raw_model(images)
                preds = logits.argmax(dim=-1)
                top1.update(preds, labels)
                loss.update(F.cross_entropy(logits.float(), labels, reduction="none"))
                if with_real:
                    real.update(preds, batch[2])
            record[f"{name}_top1"] = top1.compute().item()
            record[f"{name}_loss"] = loss.compute().item()
            if with_real:
                record["real_top1"] = real.compute().item()
        self.raw_model.train()
        self.last_eval_step = self.step
        self.eval_time += time.perf_counter() - start
        record["eval_time_s"] = time.perf_counter() - start
        self._print("eval at step {:,}: {}".format(self.step, ", ".join(
            f"{k[:-5]} {v:.2%}" for k, v in record.items() if k.endswith("_top1"))))
        self._log(record)

    def save_checkpoint(self):
        """Rank 0 writes checkpoint.pt through a temporary file (tensors and plain containers
        only, so torch.load(weights_only=True) reads it); the others wait."""
        if self.is_main:
            epoch, batch = divmod(self.step, self.steps_per_epoch)
            np_state = np.random.get_state()
            state = {
                "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "epoch": epoch, "batch_in_epoch": batch,
                "steps_per_epoch": self.steps_per_epoch, "world_size": self.world_size,
                "train_time": self.train_time, "config": self.config_dict(),
                "rng": {"torch": torch.get_rng_state(),
                        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
                        "numpy_rest": list(np_state[2:]),
                        "python": [random.getstate()[0], list(random.getstate()[1])]}}
            if self.device.type == "cuda":
                state["rng"]["cuda"] = torch.cuda.get_rng_state()
            tmp = self.checkpoint_path.with_name(self.checkpoint_path.name + ".tmp")
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.checkpoint_path)
        if self.distributed:
            dist.barrier()

    @param("model.variant")
    @param("model.img_size")
    @param("logging.peak_tflops")
    def finish(self, variant, img_size, peak_tflops):
        """Rank 0: curves.png, then the summary, printed and as summary.json: time, speed,
        device-hours, MFU, accuracy, and the TPUv3-8 reference for as many images."""
        if not self.is_main:
            return
        log = _read_log(self.log_path)
        _plot(log, self.folder / "curves.png")
        wall = time.perf_counter() - self.started
        steps = self.step - self.session_first_step
        batch = self.batch_per_rank * self.world_size
        # Steady speed: the first logged window of the session (compilation) is left out.
        img_s = (self.steady_steps * batch / self.steady_time if self.steady_steps
                 else steps * batch / max(self.session_train_time, 1e-9))
        on_gpu = self.device.type == "cuda"
        name = torch.cuda.get_device_name(self.device) if on_gpu else "cpu"
        peak = peak_tflops * 1e12 or next((v for k, v in PEAK_BF16.items() if k in name), 0)
        mfu = self.flops_per_image * img_s / self.world_size / peak if peak else None
        tpu_img_s = 90 * IMAGENET_TRAIN / TPU_90EP_S  # 4,878 img/s; 300 ep: >= 4,404
        images, total_images = self.step * batch, self.total_steps * batch
        evals = [r for r in log if any(k.endswith("_top1") for k in r)]
        summary = {
            "steps": self.step, "total_steps": self.total_steps,
            "epochs_run": images / self.n_train, "images": images,
            "session_wall_s": wall, "session_train_s": self.session_train_time,
            "session_eval_s": self.eval_time, "train_time_s": self.train_time,
            "img_per_s": img_s, "img_per_s_per_device": img_s / self.world_size,
            "devices": self.world_size, "device": name,
            "device_hours": wall * self.world_size / 3600, "mfu": mfu,
            "flops_per_image": self.flops_per_image,
            "final": {k: v for k, v in evals[-1].items() if k.endswith("_top1")} if evals else {},
            "tpu_ref_s": images / tpu_img_s,
            "tpu_ref_300ep_pace_s": images * TPU_300EP_S / (300 * IMAGENET_TRAIN),
            "projected_full_run_s": total_images / img_s,
            "tpu_ref_full_run_s": total_images / tpu_img_s}
        _write_atomic(self.folder / "summary.json", json.dumps(summary, indent=2))
        lines = [
            f"== summary: {self.folder} ==",
            f"steps {self.step:,} of {self.total_steps:,} = {summary['epochs_run']:.2f} epochs of "
            f"{self.n_train:,} images; this session: {steps:,} steps, {_hms(wall)} wall-clock "
            f"({_hms(self.session_train_time)} in steps, {_hms(self.eval_time)} in evals)",
            f"speed {img_s:,.1f} img/s ({img_s / self.world_size:,.1f} per device, compilation "
            f"left out); {summary['device_hours']:.4f} {'GPU' if on_gpu else 'device'}-hours on "
            f"{self.world_size} x {name}",
            "MFU " + (f"{mfu:.1%} of {peak / 1e12:,.0f} TFLOP/s bf16 peak per device" if mfu else
                      "n/a (peak unknown for this device: set logging.peak_tflops)")
            + f"; {self.flops_per_image / 1e9:.3f} GFLOP per training image",
            "final top-1: " + (", ".join(f"{k[:-5]} {v:.2%}" for k, v in summary["final"].items())
                               or "no eval set configured"),
            f"TPUv3-8 reference (ViT-S/16 at 224 px: 90 ep in 6 h 30 = {tpu_img_s:,.0f} img/s; "
            f"300 ep in under 24 h): this run's {images:,} images ({summary['epochs_run']:.2f} "
            f"epochs) take it {_hms(summary['tpu_ref_s'])} (300-ep pace: under "
            f"{_hms(summary['tpu_ref_300ep_pace_s'])});"
            f" here {_hms(images / img_s)} at the steady speed, {_hms(self.train_time)} measured "
            f"({tpu_img_s / img_s:.3g}x the reference's time)"]
        if self.step < self.total_steps:
            lines.append(f"projection to all {self.total_steps:,} steps: "
                         f"{_hms(summary['projected_full_run_s'])} at this speed vs "
                         f"{_hms(summary['tpu_ref_full_run_s'])} for the reference")
        if (variant, img_size) != ("S/16", 224):
            lines.append(f"(not like for like: ViT-{variant} at {img_size} px here, ViT-S/16 at "
                         f"224 px in the reference)")
        self._print("\n".join(lines))

    def _print(self, text):
        if self.is_main:
            self.pbar.write(text) if not self.pbar.disable else print(text, flush=True)

    def _log(self, record):
        if self.is_main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _stop_iterator(batches):
    """End an ffcv epoch iterator left mid-epoch: its thread may block on a full queue."""
    batches.close()
    while batches.is_alive():
        try:
            batches.output_queue.get(timeout=0.05)
        except queue.Empty:
            pass
    batches.join()


def _read_log(path):
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _write_atomic(path, text):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _hms(seconds):
    return str(datetime.timedelta(seconds=round(seconds)))


def _plot(log, path):
    """Train loss, learning rate and eval top-1 against the step, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    train = [r for r in log if "train_loss" in r]
    evals = [r for r in log if any(k.endswith("_top1") for k in r)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([r["step"] for r in train], [r["train_loss"] for r in train])
    axes[0].set(title="train loss (soft-target xent)", xlabel="step")
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1].set(title="learning rate", xlabel="step")
    for key in sorted({k for r in evals for k in r if k.endswith("_top1")}):
        axes[2].plot([r["step"] for r in evals if key in r], [r[key] for r in evals if key in r],
                     marker="o", label=key[:-5])
    axes[2].set(title="eval top-1", xlabel="step")
    if evals:
        axes[2].legend()
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None):
    """Parse, validate, train. Returns the exit code (see the module docstring)."""
    started = time.perf_counter()
    try:
        config = parse_config(argv)
        trainer = Trainer(config, started)
        if trainer.step >= trainer.stop_step:
            trainer._print(f"{trainer.checkpoint_path} is at step {trainer.step:,}: "
                           f"nothing left to train (stop step {trainer.stop_step:,})")
            return EXIT_OK
        return trainer.train()
    except ConfigError as e:
        print(f"train_vit.py: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except NonFiniteLoss as e:
        print(f"train_vit.py: error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
