"""train_vit.py's settings: every hyperparameter of a run, declared once as fastargs
Sections (each with its checker and a one-line description), and their parsing.

Declared here, below the entry points, so that every tool that reads a train config
(train_vit.py, rand_augment.py's picture, benchmark.py) parses it the same way, with the
same defaults. configs/*.yaml set them; `python train_vit.py --help` lists them.
"""
from fastargs import Param, Section
from fastargs.validation import And, InRange, OneOf

from vit_speedrun import cli
from vit_speedrun.cli import Flag, Real, RepSize

DESCRIPTION = ("Train a plain ViT on ImageNet-1k the way big_vision's `configs/vit_s16_i1k.py` "
               "does.")

Section("data", "datasets written by write_ffcv.py (X.beton with its X.beton.json sidecar)").params(
    train_dataset=Param(str, "train split .beton (the 99% of ImageNet train)", required=True),
    minival_dataset=Param(str, "minival split .beton; '' = no minival eval", default=""),
    val_dataset=Param(str, "ImageNet val .beton; '' = no val eval", default=""),
    real=Param(Flag(), "also score ReaL with the val .beton's 'real' field", default=False),
    v2_dataset=Param(str, "ImageNet-v2 .beton; '' = no v2 eval", default=""),
    num_workers=Param(And(int, InRange(min=0)),
                      "decoding threads per rank; 0 = the rank's share of the cores minus one "
                      "(one left for the training loop: README 'Speed')", default=0),
    in_memory=Param(Flag(), "let the OS page cache hold the .beton (ffcv os_cache)", default=True),
)
Section("model", "big_vision ViT (vit_speedrun/models/vit.py)").params(
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
    crop_area_min=Param(Real(1e-6, 1), "inception crop: smallest area fraction", default=0.05),
    flip=Param(Flag(), "random horizontal flip, p = 0.5", default=True),
    randaug_layers=Param(And(int, InRange(min=0)), "RandAugment ops per image; 0 = RandAugment off",
                         default=2),
    randaug_magnitude=Param(And(int, InRange(0, 10)), "RandAugment level (max 10)", default=10),
    randaug_fixed=Param(Flag(), "fix the reference's Contrast/Solarize quirks", default=False),
    mixup_alpha=Param(Real(), "mixup a ~ Beta(alpha, alpha); 0 = mixup off", default=0.2),
    mix_on_device=Param(OneOf(["auto", "on", "off"]), "normalise + mix images on the device "
                        "(uint8 host->device copy, same numbers); auto = on GPU", default="auto"),
    where=Param(OneOf(["cpu", "device"]), "decode + augment train images on the CPU (numba, "
                "libjpeg) or on the device (its bytes go there; same pixels, README 'Device "
                "decoding'); device implies mix_on_device", default="cpu"),
)
Section("optimizer", "AdamW, decoupled decay, global-norm clipping, warmup + cosine").params(
    lr=Param(Real(), "peak learning rate (big_vision config.lr)", default=1e-3),
    weight_decay=Param(Real(), "torch AdamW decay: the step decays w by lr*s(t)*this",
                       default=0.1),
    beta1=Param(Real(0, 1, open_high=True), "Adam b1", default=0.9),
    beta2=Param(Real(0, 1, open_high=True), "Adam b2", default=0.999),
    eps=Param(Real(), "Adam eps", default=1e-8),
    grad_clip_norm=Param(Real(), "clip the global gradient norm to this; 0 = off", default=1.0),
    warmup_steps=Param(And(int, InRange(min=0)),
                       "linear warmup from exactly 0 over this many steps", default=10_000),
    impl=Param(OneOf(["auto", "fused", "foreach", "forloop"]),
               "torch AdamW kernel; auto = fused on GPU, foreach on CPU", default="auto"),
)
Section("training", "the run").params(
    epochs=Param(Real(1e-9), "epochs; steps = round(epochs * n_train / batch_size)", default=90),
    batch_size=Param(And(int, InRange(min=1)), "GLOBAL batch, split over the ranks", default=1024),
    grad_accum=Param(And(int, InRange(min=1)), "micro-batches per step on each rank (the "
                     "batch of k times as many ranks on this many: the same steps and "
                     "numbers to float rounding; mixup pairs within each micro-batch)",
                     default=1),
    max_steps=Param(And(int, InRange(min=0)),
                    "stop after this step (schedule unchanged); 0 = run to the end",
                    default=0),
    seed=Param(And(int, InRange(0, 2**32 - 1)), "model init, data order and augmentation seed",
               default=0),
    precision=Param(OneOf(["bf16", "fp32"]), "autocast dtype (CPU too)", default="bf16"),
    compile=Param(OneOf(["auto", "on", "off"]), "torch.compile; auto = on GPU only",
                  default="auto"),
    compile_mode=Param(OneOf(["default", "reduce-overhead", "max-autotune",
                              "max-autotune-no-cudagraphs"]),
                       "torch.compile mode; reduce-overhead replays CUDA graphs (H100: 20% faster "
                       "runs, the same numbers; README 'Speed')", default="reduce-overhead"),
)
Section("eval", "top-1 on minival, val, ReaL and v2").params(
    every=Param(And(int, InRange(min=0)),
                "eval every this many steps (and at the end); 0 = only at the end",
                default=2500),
    batch_size=Param(And(int, InRange(min=1)), "GLOBAL eval batch", default=1024),
    crop_ratio=Param(Real(1e-6, 1), "centre crop side / shorter side (224/256: resize 256, "
                     "crop 224)", default=224 / 256),
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
    peak_tflops=Param(Real(), "per-device peak TFLOP/s for MFU; 0 = measure a matmul at "
                      "start-up", default=0.0),
    tensorboard=Param(Flag(), "also log to TensorBoard, in folder/tensorboard (needs "
                      "tensorboard)", default=False),
    wandb=Param(Flag(), "also log to Weights & Biases, one run per folder, resumed with it "
                "(needs wandb; WANDB_MODE=offline to sync later)", default=False),
    wandb_project=Param(str, "W&B project", default="vit-speedrun"),
    wandb_name=Param(str, "W&B run name; '' = the folder's name", default=""),
)
Section("debug", "fault injection for tests").params(
    nonfinite_at_step=Param(int, "make the inputs NaN at this step (tests the guard); -1 = off",
                            default=-1),
)

SECTIONS = ("data", "model", "augment", "optimizer", "training", "eval", "logging", "debug")


def parse_config(argv=None):
    """The settings from --config-file files and --section.name=value flags, checked
    (cli.parse: unknown keys and flags named with the nearest known one, bad values with
    what they accept); --help prints them all."""
    return cli.parse(argv, SECTIONS, DESCRIPTION, "train_vit.py")
