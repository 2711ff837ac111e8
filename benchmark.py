"""Speed benchmarks: what each part of training costs on this machine. Each command prints
its figures last; README's speed table is made of their output and nothing else.

  python benchmark.py loader --beton train.beton [--compare other.beton ...]  # train loader,
                                                      # stage by stage, per CPU-second
  python benchmark.py step --variant S/16 --batch-size 128   # fwd + bwd + AdamW on synthetic
                                                              # batches on the device, and MFU
  python benchmark.py full --config-file configs/vit_s16_90ep.yaml --steps 100 \\
      --data.train_dataset=train.beton          # real training steps (train_vit.py itself)
  python benchmark.py project --step-img-s 3000 --loader-img-s-per-core 900   # the table's method
  python benchmark.py photos --out /tmp/photos          # ImageNet-sized JPEGs of real photographs
  python benchmark.py storage --images /tmp/photos      # each write_ffcv storage setting: size,
                                                        # loader img/s per core (what to choose)
  python benchmark.py loader --beton train.beton --where cpu device   # host CPU per image of
                                                      # both train paths (augment.where)
  python benchmark.py device --beton train.beton   # augment.where=device on the GPU: ms per
                  # batch (JPEG stage, augment, both) and the batch equal to the CPU twin's

Every command runs on CPU too (with a tiny --variant); none changes the recipe: `step` and
`full` time the trainer's own optimization step, `loader` train_vit's own pipelines.
"""
import argparse
import statistics
import os
import sys
import time
from pathlib import Path

# As train_vit.py: FFCV loader threads made one after another may overlap in numba parallel
# code, which numba's default 'workqueue' layer answers with an abort.
os.environ.setdefault("NUMBA_THREADING_LAYER", "threadsafe")

import torch  # noqa: E402

from vit_speedrun.data.photos import make_photo_folder  # noqa: E402
from vit_speedrun.models import vit  # noqa: E402
from vit_speedrun.train.report import (IMAGENET_TRAIN, TPU_90EP_S, compiled_frames,  # noqa: E402
                                       measure_peak_tflops, mfu, sync)


def _device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def attention_shape(variant, batch_size, img_size=224):
    """[batch, heads, tokens, head_dim] of the model's scaled_dot_product_attention call:
    ViT-S/16 at 224 and batch 128 -> (128, 6, 196, 64)."""
    v = vit.decode_variant(variant)
    tokens = (img_size // v["patch_size"]) ** 2
    return batch_size, v["num_heads"], tokens, v["width"] // v["num_heads"]


def flash_attention_status(device, shape):
    """Whether SDPA's flash kernel accepts this attention shape (attention_shape) in bf16,
    forward and backward; the profile (--profile) shows which kernel the model really ran."""
    if device.type != "cuda":
        return "n/a (cpu)"
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q = torch.randn(*shape, device=device, dtype=torch.bfloat16, requires_grad=True)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
        return f"flash kernel accepts {list(shape)} (fwd + bwd)"
    except RuntimeError as err:
        return f"NOT available: {str(err).splitlines()[0]}"


def bench_step(variant, batch_size, steps, warmup, compile, device, img_size=224,
               num_classes=1000, precision="bf16", compile_mode="reduce-overhead", profile=0,
               patch_matmul=True):
    """Images/s of the trainer's optimization step (train/step.py) on a synthetic batch
    already on the device, the optimizer's share of the step time, the recompiles after the
    first step, and with profile > 0 the kernels of that many profiled steps, by device time."""
    from vit_speedrun.train import step as train_step
    model = vit.ViT(variant, num_classes=num_classes, img_size=img_size).to(device)
    model.patch_matmul = patch_matmul
    optimizer = train_step.build_optimizer(model, 1e-3, 0.1, (0.9, 0.999), 1e-8, "auto", device.type)
    params = [p for p in model.parameters() if p.requires_grad]
    run_model = train_step.compile_model(model, compile_mode) if compile else model
    images = torch.rand(batch_size, 3, img_size, img_size, device=device) * 2 - 1
    targets = torch.softmax(torch.randn(batch_size, num_classes, device=device), dim=-1)

    def step():
        return train_step.optimization_step(run_model, optimizer, params, images, targets,
                                            precision, 1.0)

    compile_start = time.perf_counter()
    step()
    frames_after_first = compiled_frames()
    for _ in range(warmup - 1):
        step()
    sync(device)
    warmup_s = time.perf_counter() - compile_start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    step_s = (time.perf_counter() - start) / steps
    recompiles = compiled_frames() - frames_after_first
    kernels = profile_kernels(step, profile, device) if profile else ([], 0.0)
    # The optimizer's share: the same AdamW update alone, on the gradients left by a step.
    for p in params:
        p.grad = torch.zeros_like(p)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    sync(device)
    opt_s = (time.perf_counter() - start) / steps
    return {"img_s": batch_size / step_s, "step_ms": step_s * 1e3, "optimizer_ms": opt_s * 1e3,
            "warmup_s": warmup_s, "flops_per_image": vit.flops_per_image(model),
            "recompiles": recompiles, "kernels": kernels[0], "busy_ms": kernels[1]}


def profile_kernels(step, steps, device, top=12):
    """([(kernel name, ms per step, share of device time)] of `steps` steps under
    torch.profiler, largest first; kernel ms per step, all kernels)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    from torch.autograd import DeviceType
    times = {}
    for e in prof.events():
        if device.type == "cuda" and e.device_type != DeviceType.CUDA:
            continue  # kernels only: CPU-side ops overlap them
        t = e.device_time_total if device.type == "cuda" else e.self_cpu_time_total
        times[e.name] = times.get(e.name, 0.0) + t
    total = sum(times.values()) or 1.0
    ranked = sorted(times.items(), key=lambda kv: -kv[1])[:top]
    return [(name, t / 1e3 / steps, t / total) for name, t in ranked], total / 1e3 / steps


def project(step_img_s, loader_img_s_per_core, gpus=8, cores=None, epochs=(90, 150, 300)):
    """The README table's projection: one node trains at the slower of its GPUs (per-GPU step
    rate x gpus) and its data loading (per-core loader rate x cores). step_img_s=None (not
    measured yet) leaves only the data bound: then the hours are a lower bound."""
    cores = cores or 16 * gpus
    data_rate = loader_img_s_per_core * cores
    gpu_rate = step_img_s * gpus if step_img_s else float("inf")
    rate = min(gpu_rate, data_rate)
    rows = []
    for ep in epochs:
        rows.append({"epochs": ep, "hours": ep * IMAGENET_TRAIN / rate / 3600,
                     "bound": "GPU" if gpu_rate <= data_rate else "data",
                     "tpu_hours": TPU_90EP_S * ep / 90 / 3600})
    return gpu_rate, data_rate, rows


STORAGE_SETTINGS = {  # name -> write_ffcv options; 'original' is the default and faithful one
    "original": dict(write_mode="original", window_index=32),  # the train split's default
    "original-bare": dict(write_mode="original", window_index=0),  # without the index
    "restart": dict(write_mode="restart"),  # the same pixels, a faster crop decode
    "raw": dict(write_mode="raw"),
    "proportion-95": dict(write_mode="proportion", jpeg_quality=95, compress_probability=0.5),
    "proportion-90": dict(write_mode="proportion", jpeg_quality=90, compress_probability=0.5),
    "jpg-95": dict(write_mode="jpg", jpeg_quality=95),
    "jpg-90": dict(write_mode="jpg", jpeg_quality=90),
}


def _hm(hours):
    return f"{int(hours)} h {round(hours % 1 * 60):02d}"


def cmd_step(args):
    device = _device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    shape = attention_shape(args.variant, args.batch_size, args.img_size)
    mode = (args.compile_mode if args.compile else "off") + (
        ", patch conv" if args.patch_embed == "conv" else "")
    print(f"step: ViT-{args.variant} at {args.img_size}px, batch {args.batch_size} on "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"{args.precision}, compile={mode}, torch {torch.__version__}")
    peak = measure_peak_tflops(device, torch.bfloat16 if args.precision == "bf16" else torch.float32)
    r = bench_step(args.variant, args.batch_size, args.steps, args.warmup, args.compile, device,
                   args.img_size, precision=args.precision, compile_mode=args.compile_mode,
                   profile=args.profile, patch_matmul=args.patch_embed == "matmul")
    print(f"attention {list(shape)}: {flash_attention_status(device, shape)}")
    print(f"warm-up ({args.warmup} steps, compile included): {r['warmup_s']:.1f} s; "
          f"recompiles after the first step: {r['recompiles']}")
    print(f"step {r['step_ms']:.2f} ms, optimizer alone {r['optimizer_ms']:.2f} ms "
          f"({r['optimizer_ms'] / r['step_ms']:.1%} of the step)")
    if r["kernels"]:
        print(f"profile: {'kernels' if device.type == 'cuda' else 'CPU ops'} busy "
              f"{r['busy_ms']:.2f} ms per step; top by time (ms per step, share):")
        for name, ms, share in r["kernels"]:
            print(f"  {ms:8.3f} {share:6.1%}  {name[:110]}")
    print(f"measured {args.precision} matmul peak: {peak:.3g} TFLOP/s"
          + (" (CPU: MFU of a tiny model is only a smoke figure)" if device.type == "cpu" else ""))
    util = mfu(r["img_s"], r["flops_per_image"], peak)
    print(f"RESULT step: {r['img_s']:,.1f} img/s per device, batch {args.batch_size}, "
          f"compile={mode}, {r['flops_per_image'] / 1e9:.3g} GFLOP/img, MFU {util:.1%} "
          f"of the measured peak")


def bench_pipelines(clock, kind, res=224, num_classes=1000, beton=None):
    """Pipelines timed by bench_loader, stage by stage: 'decode' = the decode of each
    sampled crop window alone (what the decoder reads and decompresses); 'baseline' = + TF's
    bilinear resize and the flip (uint8 out); 'device' = + RandAugment(2, 10): the CPU part
    of train_pipelines(mix_on_device=True), whose normalise + mixup the GPU then does;
    'full' = train_pipelines with normalise + mixup on the CPU (float32 out, two-hot
    labels); 'ffcv' = FFCV's own RandomResizedCrop decoder + flip; 'planner' = the host's
    whole share of augment.where=device (crop, plan, draws; the CPU branch's decode and
    resize for the samples the device cannot decode)."""
    from vit_speedrun.pp import ffcv_ops  # imports ffcv (seconds): only where data loads
    if kind == 'planner':
        from vit_speedrun.pp.device import ffcv_ops as device_ops
        planner = device_ops.DevicePlanner(clock, device_ops.sample_budget(beton, res), res)
        return {'image': [planner], 'label': [ffcv_ops.IntDecoder()]}
    if kind == 'decode':
        return {'image': [_DecodeOnly(clock, res)], 'label': [ffcv_ops.IntDecoder()]}
    if kind in ('full', 'device'):
        return ffcv_ops.train_pipelines(clock, res=res, num_classes=num_classes,
                                            mix_on_device=kind == 'device')
    if kind == 'baseline':
        return {'image': [ffcv_ops.InceptionCropDecoder(clock, res),
                          ffcv_ops.RandomFlip(clock)],
                'label': [ffcv_ops.IntDecoder()]}
    if kind == 'ffcv':
        from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
        from ffcv.transforms import RandomHorizontalFlip
        return {'image': [RandomResizedCropRGBImageDecoder((res, res)),
                          RandomHorizontalFlip()],
                'label': [ffcv_ops.IntDecoder()]}
    raise ValueError(f"bench_pipelines: kind must be one of {', '.join(LOADER_KINDS)} or "
                     f"ffcv, not {kind!r}")


def _DecodeOnly(clock, res):
    """ffcv_ops.InceptionCropDecoder without its resize (one pixel is copied, so that
    the decode cannot be optimised away): the decode stage alone."""
    from vit_speedrun.pp import ffcv_ops
    from numba import njit

    @njit(nogil=True)
    def touch(pixels, y0, x0, h, w, dst):
        dst[0, 0, 0] = pixels[y0, x0, 0]

    class DecodeOnly(ffcv_ops.InceptionCropDecoder):
        def resizer(self):
            return touch
    return DecodeOnly(clock, res)


def bench_loader(beton, *, batch_size=64, num_workers=2, res=224, full=True, batches=40,
                 warmup=4, kind=None, seed=0, cpu=False):
    """Images/s of one train loader over `batches` timed batches (after `warmup` batches
    that include numba's compilation). kind overrides full: 'full', 'device', 'baseline',
    'ffcv' (see bench_pipelines).
    cpu=True returns (images/s, images per CPU-second of this process): the second is
    the per-core cost, less sensitive to other jobs on a shared machine.

    The epoch is made long enough by repeating the beton's indices, so a single epoch (one
    set of buffers) covers warm-up and timing.
    """
    import numpy as np
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader

    from vit_speedrun.pp import ffcv_ops
    kind = kind or ('full' if full else 'baseline')
    clock = ffcv_ops.AugmentClock(seed)
    n = int(Reader(str(beton)).num_samples)
    need = (batches + warmup) * batch_size
    indices = np.tile(np.arange(n), -(-need // n))[:need]
    loader = Loader(str(beton), batch_size=batch_size, num_workers=num_workers,
                    order=OrderOption.RANDOM, seed=seed, indices=indices, drop_last=True,
                    pipelines=bench_pipelines(clock, kind, res, beton=beton))
    clock.set_epoch(0)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    elapsed, cpu_time = time.perf_counter() - start, time.process_time() - cpu_start
    it.close()
    speed = batches * batch_size / elapsed
    return (speed, batches * batch_size / cpu_time) if cpu else speed


LOADER_KINDS = {  # bench_pipelines kind -> what it runs, each stage adding to the one above
    "decode": "decode (crop window)",
    "baseline": "+ resize, flip",
    "device": "+ RandAugment",           # the CPU part when train_vit mixes on the GPU
    "full": "+ normalise, mixup (CPU)",  # all on the CPU
}


def loader_rates(beton, args, kinds=tuple(LOADER_KINDS)):
    """{kind: (images/s, images per CPU-second)}; the second is the per-core cost, robust
    to other jobs on the machine."""
    return {kind: bench_loader(
        beton, batch_size=args.batch_size, num_workers=args.workers or os.cpu_count(),
        res=args.res, kind=kind, batches=args.batches, cpu=True) for kind in kinds}


def planned_batches(beton, res, batch_size, samples, seed=0):
    """(planner, iterator over its row batches) of augment.where=device's host stage, over
    the first `samples` samples of epoch 0 (the set repeated as needed); the planner's
    totals are those of the last batch drawn."""
    import numpy as np
    from ffcv.loader import Loader, OrderOption

    from vit_speedrun.pp import ffcv_ops
    from vit_speedrun.pp.device import ffcv_ops as device_ops
    clock = ffcv_ops.AugmentClock(seed)
    planner = device_ops.DevicePlanner(clock, device_ops.sample_budget(beton, res), res)
    loader = Loader(str(beton), batch_size=batch_size, num_workers=1, drop_last=False,
                    order=OrderOption.SEQUENTIAL,
                    indices=np.arange(samples) % int(loader_size(beton)),
                    pipelines={'image': [planner], 'label': None})
    clock.set_epoch(0)
    return planner, (rows for rows, in loader)


def routes(rows):
    """(samples the device decodes, samples the host decodes) of DevicePlanner's rows."""
    import numpy as np

    from vit_speedrun.pp.device import ffcv_ops as device_ops
    modes = np.asarray(rows)[:, :device_ops.IP_BYTES].view(np.int64)[:, device_ops.K.IP_MODE]
    return (int((modes == device_ops.K.MODE_DECODED).sum()),
            int((modes == device_ops.K.MODE_RESIZED).sum()))


def device_routes(beton, res=224, samples=512):
    """(samples the device decodes, samples the host decodes) of `samples` planned ones."""
    device = host = 0
    for rows in planned_batches(beton, res, 64, samples)[1]:
        d, h = routes(rows)
        device, host = device + d, host + h
    return device, host


def loader_size(beton):
    from ffcv.reader import Reader
    return Reader(str(beton)).num_samples


def cmd_where(args, threads):
    """The host's CPU per image of the two train paths, side by side in one run: 'cpu'
    (decode, resize, flip and RandAugment on the host; mixing on the GPU, the default) and
    'device' (crop, plan and draws; decoding and augmenting on the device)."""
    for beton in [args.beton, *args.compare]:
        storage = _storage(beton)
        device, host = device_routes(beton, args.res)
        print(f"RESULT loader {storage:>22} device path: the device decodes {device} of "
              f"{device + host} samples, the host {host} (no index, pixels, over budget)")
        rates = {}
        for where, kind in (("cpu", "device"), ("device", "planner")):
            wall, per_cpu = bench_loader(beton, batch_size=args.batch_size,
                                         num_workers=threads, res=args.res, kind=kind,
                                         batches=args.batches, cpu=True)
            rates[where] = per_cpu
            print(f"RESULT loader {storage:>22} {where + ' path (host part)':>25}: "
                  f"{wall:,.0f} img/s, {per_cpu:,.0f} img per CPU-second")
        a, b = 1e3 / rates["cpu"], 1e3 / rates["device"]
        print(f"host CPU per image: cpu path {a:.3f} ms, device path {b:.3f} ms "
              f"({a / b:.1f} x fewer)")


def cmd_loader(args):
    threads = args.workers or os.cpu_count()
    if args.where:
        return cmd_where(args, threads)
    betons = [args.beton, *args.compare]
    print(f"loader: {', '.join(betons)}; batch {args.batch_size}, {threads} worker threads, "
          f"res {args.res}, {args.batches} batches after the warm-up; each stage adds to the "
          f"one above; the GPU default is '+ RandAugment' (normalise + mixup on the GPU)")
    for beton in betons:
        storage = _storage(beton)
        rates = loader_rates(beton, args)
        for kind, (wall, per_cpu) in rates.items():
            print(f"RESULT loader {storage:>22} {LOADER_KINDS[kind]:>25}: {wall:,.0f} img/s, "
                  f"{wall / threads:,.0f} per worker; {per_cpu:,.0f} img per CPU-second")
        base = rates["baseline"][1]
        print(f"RESULT loader {storage:>22} RandAugment+mixup cost per image: "
              f"+{base / rates['full'][1] - 1:.0%} (mixing on the GPU: "
              f"+{base / rates['device'][1] - 1:.0%}) over decode+resize+flip")


def _storage(beton):
    """'write_mode[, max N px][ + index N px]' from the beton's sidecar, or its file name
    without one."""
    try:
        import write_ffcv
        opts = write_ffcv.read_sidecar(beton)["settings"]
    except Exception:
        return Path(beton).name
    cap, span = opts.get("max_resolution"), opts.get("window_index")
    return (opts.get("write_mode", "?") + (f", max {cap} px" if cap else "")
            + (f" + index {span} px" if span else ""))


def cmd_full(args, overrides):
    """train_vit.py itself for --steps steps, evals and checkpoints off, in a scratch folder;
    the rate is that of its log windows after the first (which pays for compilation)."""
    import json
    import tempfile
    import train_vit
    folder = args.folder or tempfile.mkdtemp(prefix="bench_full_")
    argv = ["--config-file", args.config_file, *overrides, f"--training.max_steps={args.steps}",
            f"--logging.folder={folder}", f"--logging.log_every={args.log_every}",
            "--logging.checkpoint_every=0", "--data.minival_dataset=", "--data.val_dataset=",
            "--data.v2_dataset=", "--data.real=0"]
    code = train_vit.main(argv)
    if code:
        raise SystemExit(f"benchmark.py full: train_vit.py exited with {code}")
    log = [json.loads(line) for line in open(Path(folder) / "log.jsonl")]
    windows = [r for r in log if "img_per_s" in r][1:]
    if not windows:
        raise SystemExit(f"benchmark.py full: fewer than two log windows in {folder}: raise "
                         f"--steps above 2 x --log-every ({args.log_every})")
    img_s = sum(r["img_per_s"] for r in windows) / len(windows)
    wait = sum(r["data_wait"] for r in windows) / len(windows)
    print(f"RESULT full: {img_s:,.1f} img/s over {len(windows)} windows of {args.log_every} "
          f"steps after the first; waiting for data {wait:.0%} of the time (log: {folder})")


def cmd_photos(args):
    """The photos go to a temporary folder beside --out and move in once all are written:
    an interrupted run (error, Ctrl-C, SIGTERM) leaves neither a partial set nor the
    temporary folder."""
    import shutil
    import signal
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        # added photos would mix with the old ones, unreported
        raise SystemExit(f"benchmark.py photos: {out} is not empty; pass --overwrite to "
                         f"replace the photos there (its n*/*.JPEG files) or choose "
                         f"another --out")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        _, kb = make_photo_folder(tmp, args.n)
        for path in out.glob("n*/*.JPEG"):
            path.unlink()
        for path in sorted(tmp.glob("n*/*.JPEG")):
            (out / path.parent.name).mkdir(parents=True, exist_ok=True)
            os.replace(path, out / path.parent.name / path.name)
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"RESULT photos: {args.n} JPEGs in {out}, mean {kb:.1f} kB (500x375, q90, 4:2:0)")


def cmd_storage(args):
    """Convert the same folder with each storage setting, then time the train loader on it."""
    import write_ffcv
    threads = args.workers or os.cpu_count()
    work = Path(args.work or Path(args.images).with_name(Path(args.images).name + "_betons"))
    print(f"storage: {args.images}, max_resolution {args.max_resolution}, loader with "
          f"{threads} threads, batch {args.batch_size}, {args.batches} timed batches")
    rows = []
    for name in args.settings.split(","):
        beton = work / f"{name}.beton"
        settings = STORAGE_SETTINGS[name]
        cap = None if settings["write_mode"] in write_ffcv.BYTE_MODES else args.max_resolution
        meta = write_ffcv.convert(args.images, beton, "val", max_resolution=cap,
                                  overwrite=True, progress=False, **settings)
        from ffcv.reader import Reader
        kb = sum(int(r["size"]) for r in Reader(str(beton)).alloc_table) / meta["num_images"] / 1e3
        rows.append((name, kb, loader_rates(beton, args)))
    for name, kb, rates in rows:
        print(f"RESULT storage {name:>13}: {kb:6.1f} kB/img; img per CPU-second: " + ", ".join(
            f"{LOADER_KINDS[k]} {rates[k][1]:,.0f}" for k in LOADER_KINDS))


def cmd_device(args):
    """augment.where=device's device share on one planned batch: milliseconds per batch of
    the JPEG and augmentation stages, together and apart (wall-clock between device
    synchronisations; medians of --repeats), and whether the device's images equal the CPU
    twin's, value for value (exit 1 if not)."""
    import numpy as np

    from vit_speedrun.pp.device import ffcv_ops as device_ops
    device = _device(args.device)
    planner, batches = planned_batches(args.beton, args.res, args.batch_size, args.batch_size)
    rows = torch.as_tensor(np.asarray(next(batches)).copy())
    totals = [int(v) for v in planner.totals]
    want = device_ops.decode_and_augment(rows, totals, args.res, planner.layers).numpy()
    on = rows.to(device)
    got = device_ops.decode_and_augment(on, totals, args.res, planner.layers)
    same = bool(np.array_equal(got.cpu().numpy(), want))
    total, jpeg, augment = [], [], []
    for _ in range(args.repeats):
        marks = []
        sync(device)
        start = time.perf_counter()
        device_ops.decode_and_augment(on, totals, args.res, planner.layers,
                                      jpeg_done=lambda: marks.append(time.perf_counter()))
        sync(device)
        end = time.perf_counter()
        total.append((end - start) * 1e3)
        jpeg.append((marks[0] - start) * 1e3)
        augment.append((end - marks[0]) * 1e3)
    decoded = routes(rows.numpy())[0]
    med = statistics.median
    print(f"RESULT device {device}: batch {args.batch_size} at {args.res} px ({decoded} decoded "
          f"on the device, {args.batch_size - decoded} on the host), {rows.shape[1]:,} bytes "
          f"per sample row; decode + augment {med(total):.2f} ms per batch (JPEG stage "
          f"{med(jpeg):.2f} ms, augment {med(augment):.2f} ms; medians of {args.repeats})")
    print(f"device images equal the CPU twin's: {same}")
    return 0 if same else 1


def cmd_project(args):
    gpu_rate, data_rate, rows = project(args.step_img_s, args.loader_img_s_per_core,
                                        args.gpus, args.cores)
    gpus = (f"{args.gpus} GPUs x {args.step_img_s:,.0f} img/s = {gpu_rate:,.0f} img/s"
            if args.step_img_s else "GPU step rate not measured yet: data bound only, a lower bound")
    print(f"projection (not a measurement): {gpus}; {args.cores or 16 * args.gpus} cores x "
          f"{args.loader_img_s_per_core:,.0f} img/s = {data_rate:,.0f} img/s")
    reported = {90: "TPUv3-8 6 h 30 (reported); 8x A100 port 5 h 41 (reported)",
                300: "TPUv3-8 under 24 h (reported)"}
    for row in rows:
        ref = reported.get(row["epochs"], f"TPUv3-8 ~{_hm(row['tpu_hours'])} (90-ep time scaled)")
        bound = f"{row['bound']}-bound" if args.step_img_s else "data-bound; at least"
        print(f"RESULT project {row['epochs']:>3} epochs: {_hm(row['hours'])} ({bound})"
              f" vs {ref}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The examples above keep their lines, and each option shows its default, unless its
    help already says it (a None default means "decided at run time", said in words)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and action.default not in (None, argparse.SUPPRESS)
                and not action.required and "default" not in text):
            text += " (default: %(default)s)"
        return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("step", help="fwd + bwd + AdamW on synthetic batches already on the device")
    p.add_argument("--variant", default="S/16", help="a ViT variant (vit.VARIANTS), e.g. S/16; mu/4 for a CPU smoke")
    p.add_argument("--img-size", type=int, default=224, help="image side in pixels")
    p.add_argument("--batch-size", type=int, default=128, help="per device (the recipe: 1024 / 8)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    p.add_argument("--compile", type=int, default=None, help="torch.compile (default: on for cuda)")
    p.add_argument("--compile-mode", default="reduce-overhead",
                   help="torch.compile mode (train_vit's default: reduce-overhead), or e.g. "
                        "default, max-autotune-no-cudagraphs")
    p.add_argument("--profile", type=int, default=0, help="profile this many steps: top kernels")
    p.add_argument("--patch-embed", choices=("matmul", "conv"), default="matmul",
                   help="models/vit.py's patch embedding as one matmul (default) or its Conv2d")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="autocast dtype")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.set_defaults(fn=cmd_step)
    p = sub.add_parser("loader", help="the train loader stage by stage (decode, resize, RandAugment, mixup)")
    p.add_argument("--beton", required=True, help="a train .beton written by write_ffcv.py")
    p.add_argument("--compare", nargs="+", default=[], metavar="BETON",
                   help="more .betons of the same images (other storages), timed alike")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch")
    p.add_argument("--workers", type=int, default=0, help="ffcv threads (default: all cores)")
    p.add_argument("--res", type=int, default=224, help="output crop side in pixels")
    p.add_argument("--batches", type=int, default=20, help="timed batches per pipeline")
    p.add_argument("--where", nargs="+", choices=("cpu", "device"), default=None,
                   help="instead of the stages: the host's CPU per image of the train path "
                        "on the CPU and of augment.where=device, side by side (last line)")
    p.set_defaults(fn=cmd_loader)
    p = sub.add_parser("full", help="real training steps: train_vit.py with evals off")
    p.add_argument("--config-file", required=True, help="a train_vit.py config")
    p.add_argument("--steps", type=int, default=60, help="training steps (training.max_steps)")
    p.add_argument("--log-every", type=int, default=10, help="steps per timing window")
    p.add_argument("--folder", default=None, help="train_vit logging.folder (default: a temp dir)")
    p.set_defaults(fn=cmd_full)
    p = sub.add_parser("photos", help="write ImageNet-like JPEGs (size, bytes, chroma) from real photographs")
    p.add_argument("--out", required=True, help="folder to create (ImageFolder layout)")
    p.add_argument("--n", type=int, default=400, help="number of JPEGs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the photos of an earlier run in --out (else a non-empty --out is an error)")
    p.set_defaults(fn=cmd_photos)
    p = sub.add_parser("storage", help="write_ffcv storage settings: size and loader speed per core")
    p.add_argument("--images", required=True, help="an ImageFolder, e.g. from `benchmark.py photos`")
    p.add_argument("--settings", default=",".join(STORAGE_SETTINGS), help="comma-separated, of: "
                   + ", ".join(STORAGE_SETTINGS) + " (default: all)")
    p.add_argument("--work", default=None, help="where the betons go (default: beside --images)")
    p.add_argument("--max-resolution", type=int, default=None,
                   help="cap for the settings other than original and restart (default: none)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--workers", type=int, default=0, help="ffcv threads (default: all cores)")
    p.add_argument("--res", type=int, default=224, help="output crop side in pixels")
    p.add_argument("--batches", type=int, default=20, help="timed batches per pipeline")
    p.set_defaults(fn=cmd_storage)
    p = sub.add_parser("device", help="augment.where=device on the GPU: ms per batch, and "
                                      "its images equal to the CPU twin's")
    p.add_argument("--beton", required=True, help="a train .beton written by write_ffcv.py")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch")
    p.add_argument("--res", type=int, default=224, help="output crop side in pixels")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda if present)")
    p.set_defaults(fn=cmd_device)
    p = sub.add_parser("project", help="the projection method of README's table")
    p.add_argument("--step-img-s", type=float, default=None,
                   help="measured per-GPU step img/s (`step`); omitted: data bound only")
    p.add_argument("--loader-img-s-per-core", type=float, required=True, help="measured loader img/s per core")
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the node")
    p.add_argument("--cores", type=int, default=None, help="node's cores (default 16 per GPU)")
    p.set_defaults(fn=cmd_project)
    for p in sub.choices.values():
        p.formatter_class = HelpFormatter
    sub.choices["full"].epilog = ("Any other argument is a train_vit.py setting "
                                  "(--section.name=value; python train_vit.py --help).")
    args, overrides = parser.parse_known_args(argv)
    if args.fn in (cmd_loader, cmd_storage, cmd_full, cmd_device):  # these build ffcv Loaders
        from vit_speedrun.pp import ffcv_ops
        hook = sys.unraisablehook
        sys.unraisablehook = lambda u: None if ffcv_ops.is_ffcv_finalizer_noise(u) else hook(u)
    if getattr(args, "compile", 0) is None:
        args.compile = _device(args.device).type == "cuda"
    if args.fn is cmd_full:
        return cmd_full(args, overrides)  # the rest are train_vit.py --section.param=value
    if overrides:
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    return args.fn(args) or 0


if __name__ == "__main__":
    sys.exit(main())
