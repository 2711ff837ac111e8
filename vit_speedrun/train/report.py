"""What a run reports about its speed, measured one way everywhere: the TPUv3-8 reference
figures and the one definition of MFU that `train_vit.py` and `benchmark.py` share.

MFU = (training FLOPs per image, vit.flops_per_image) x (images/s per device) / (peak).
The peak is a bf16 (or fp32) matrix product measured on the device itself in the same run,
not a datasheet figure: "H100" names SXM, PCIe and NVL parts whose datasheet peaks differ by
a third, and clocks and power caps move the real one. `logging.peak_tflops` (train_vit.py)
replaces the measurement with a number the user gives; the printout says which was used.

And what train_vit.py writes about a run: log.jsonl (strict JSON lines), and at the end
curves.png and the summary (summary.json and its printout, with the TPU comparison).
Epochs are counted one way everywhere (`epochs_done`): images seen / train images, the
recipe's own definition (steps = round(epochs x n_train / batch)).
"""
import datetime
import json
import math
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

# TPUv3-8 reference (paper, section 3): 90 epochs of 1,268,355 images in 6 h 30; 300 < 24 h.
IMAGENET_TRAIN = 1_268_355       # the 99% of ImageNet-1k train the recipe trains on
TPU_90EP_S, TPU_300EP_S = 6.5 * 3600, 24 * 3600


def sync(device):
    """Wait for the device's queued work (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_tflops(device, dtype=torch.bfloat16, n=None, repeats=10):
    """Throughput of one large square matmul on `device`, in TFLOP/s (random inputs, after
    a warm-up): the denominator of MFU. n defaults to 8192 on GPU (about 0.2 s on an
    H100), 512 on CPU (where MFU of a tiny model is only a smoke figure)."""
    n = n or (8192 if device.type == "cuda" else 512)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e12


def peak_source(device, dtype, given_tflops=0.0):
    """(peak TFLOP/s, where it came from) for MFU: the user's figure, or measured here."""
    if given_tflops > 0:
        return given_tflops, "given by logging.peak_tflops"
    name = str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float32", "fp32")
    n = 8192 if device.type == "cuda" else 512
    return (measure_peak_tflops(device, dtype, n),
            f"{name} {n}x{n} matmul measured on this device at start-up")


def mfu(img_s_per_device, flops_per_image, peak_tflops):
    """Model FLOPs utilisation: achieved training FLOP/s per device over the peak."""
    return img_s_per_device * flops_per_image / (peak_tflops * 1e12)


def compiled_frames():
    """Frames torch.compile has compiled in this process so far: a recompile adds one."""
    from torch._dynamo.utils import counters
    return counters["frames"]["total"]


# --- what a run writes ---------------------------------------------------------------------
class SpeedWindows:
    """The trainer's clock and per-window sums. Steps are timed in log windows, each ending
    in a device sync (its time is the device's, not that of the host queueing steps ahead);
    the first window of a session pays for compilation and is left out of the steady speed.
    The window's loss, grad-norm and non-finite sums stay on the device: no sync per step.
    `train_time` (seconds in steps) carries over resumed sessions through the checkpoint."""

    def __init__(self, device, train_time=0.0):
        self.device, self.train_time = device, train_time
        self.session_time, self.session_windows = 0.0, 0
        self.steady_steps, self.steady_time = 0, 0.0
        self.reset()

    def reset(self):
        zero = torch.zeros((), device=self.device)
        self.loss, self.grad_norm, self.nonfinite = zero, zero.clone(), zero.int()
        self.steps = 0  # in the loss window, those carried over from a checkpoint included
        self.timed_steps, self.data_wait, self.gpu_wait, self.start = 0, 0.0, 0.0, None

    def fetch(self, batches, host_lead):
        """The next batch of the epoch iterator `batches` (None at its end), paced by
        host_lead (loaders.HostLead). The window's clock starts at its first fetch; the
        time spent waiting for the device and for the loader goes to gpu_wait and data_wait."""
        if self.start is None:
            self.start = time.perf_counter()
        t0 = time.perf_counter()
        host_lead.wait()
        t1 = time.perf_counter()
        self.gpu_wait += t1 - t0
        batch = host_lead.take(batches)
        if batch is not None:
            self.data_wait += time.perf_counter() - t1
        return batch

    def add(self, loss, grad_norm):
        """One step's loss and grad norm (device tensors)."""
        self.loss += loss
        self.grad_norm += grad_norm
        self.nonfinite += (~torch.isfinite(loss)).int()
        self.steps += 1
        self.timed_steps += 1

    def open_window(self):
        """(sums, steps) of the loss window: float32 [loss, grad norm, non-finite count] on the
        CPU. A SIGTERM stops a run between log steps; the checkpoint keeps these so that the
        resumed run's next record sums the same steps in the same order as an unbroken run's."""
        sums = torch.stack([self.loss.float(), self.grad_norm.float(), self.nonfinite.float()])
        return sums.cpu(), self.steps

    def carry_in(self, sums, steps):
        """Continue the loss window that open_window() saved (its time is not carried: the
        record's speed covers this session's steps only)."""
        sums = sums.to(self.device)
        self.loss, self.grad_norm, self.nonfinite = sums[0].clone(), sums[1].clone(), sums[2].int()
        self.steps = steps

    def close(self):
        """Wait for the device, then add the window's seconds to the totals; returns them."""
        sync(self.device)
        seconds = time.perf_counter() - self.start
        self.train_time += seconds
        self.session_time += seconds
        if self.session_windows > 0:
            self.steady_steps += self.timed_steps
            self.steady_time += seconds
        self.session_windows += 1
        return seconds

    def img_s(self, global_batch, session_steps):
        """Images/s of the session: steady windows when there are any, else all of it."""
        if self.steady_steps:
            return self.steady_steps * global_batch / self.steady_time
        return session_steps * global_batch / max(self.session_time, 1e-9)


def epochs_done(step, global_batch, n_train):
    """Epochs after `step` steps: images seen / train images (the definition the recipe's
    step count uses; the loader's passes drop the last partial batch, so they run ahead)."""
    return step * global_batch / n_train


def finite_json(record):
    """record with every NaN/inf float replaced by null, and the keys replaced listed under
    "nonfinite" (nested keys as a.b): JSON has no NaN, and a strict parser rejects it."""
    replaced = []

    def clean(value, key):
        if isinstance(value, dict):
            return {k: clean(v, f"{key}.{k}" if key else k) for k, v in value.items()}
        if isinstance(value, float) and not math.isfinite(value):
            replaced.append(key)
            return None
        return value
    out = clean(record, "")
    if replaced:
        out["nonfinite"] = replaced
    return out


def json_line(record):
    """One log.jsonl line: strict JSON (see finite_json)."""
    return json.dumps(finite_json(record), allow_nan=False) + "\n"


def read_log(path):
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_atomic(path, text):
    """Write through a temporary file and a rename: readers see the old or the new text."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunLog:
    """What a run writes to logging.folder and the console, rank 0 only (on the other ranks
    every method does nothing): config.json; log.jsonl, cut back on start to the step the
    run resumes from (records of steps never checkpointed go, so a resumed run's log reads
    as an unbroken run's); the progress bar and the text printed through it; at the end
    curves.png and summary.json. trackers (train/trackers.py) get every record and the
    summary too."""

    def __init__(self, folder, config, step, stop_step, is_main, progress, trackers=()):
        self.folder, self.is_main, self.trackers = Path(folder), is_main, list(trackers)
        self.path = self.folder / "log.jsonl"
        if is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self.folder / "config.json", json.dumps(config, indent=2, sort_keys=True))
            kept = [r for r in read_log(self.path) if r["step"] <= step]
            write_atomic(self.path, "".join(json_line(r) for r in kept))
        self.pbar = tqdm(total=stop_step, initial=step, unit="step", dynamic_ncols=True,
                         disable=not (progress and is_main))

    def print(self, text):
        """A line on stdout, above the progress bar when it shows."""
        if self.is_main:
            self.pbar.write(text) if not self.pbar.disable else print(text, flush=True)

    def write(self, record):
        if self.is_main:
            with open(self.path, "a") as f:
                f.write(json_line(record))
            for tracker in self.trackers:
                tracker.log(record)

    def step_done(self):
        self.pbar.update(1)

    def show(self, record, stuck_at=None):
        """The latest train record beside the progress bar; stuck_at: the loss is ln(this)."""
        self.pbar.set_postfix(loss=f"{record['train_loss']:.4f}"
                              + (f"=ln({stuck_at})" if stuck_at else ""),
                              lr=f"{record['lr']:.2e}", img_s=f"{record['img_per_s']:.0f}",
                              wait=f"{record['data_wait']:.0%}", refresh=False)

    def finish(self, **figures):
        """curves.png, then the summary (`summary`'s arguments but the log) as summary.json
        and printed."""
        if not self.is_main:
            return
        log = read_log(self.path)
        plot(log, self.folder / "curves.png")
        result = summary(folder=self.folder, log=log, **figures)
        clean = finite_json(result)
        write_atomic(self.folder / "summary.json", json.dumps(clean, indent=2, allow_nan=False))
        for tracker in self.trackers:
            tracker.finish(clean)
        self.print(summary_text(result))

    def close(self):
        self.pbar.close()
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()


def duration(seconds):
    """h:mm:ss, or seconds with decimals under a minute (a short run is not '0:00:00')."""
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    return str(datetime.timedelta(seconds=round(seconds)))


def ratio(x):
    """A time ratio as people write it: 0.85x, 3.2x, 1,110x."""
    return f"{x:,.0f}x" if x >= 100 else f"{x:.3g}x"


def summary(*, folder, step, total_steps, global_batch, n_train, session_steps, wall_s,
            session_train_s, session_eval_s, train_time_s, img_s, devices, device,
            flops_per_image, peak_tflops, peak_source, recompiles, log, variant, img_size):
    """The end-of-run figures (summary.json): time, speed, device-hours, MFU, final top-1,
    and the TPUv3-8 reference for as many images. img_s is the steady speed (the session's
    first log window, which pays for compilation, left out)."""
    tpu_img_s = 90 * IMAGENET_TRAIN / TPU_90EP_S  # 4,878 img/s
    images, total_images = step * global_batch, total_steps * global_batch
    evals = [r for r in log if any(k.endswith("_top1") for k in r)]
    return {
        "folder": str(folder), "variant": variant, "img_size": img_size,
        "steps": step, "total_steps": total_steps, "session_steps": session_steps,
        "epochs_run": epochs_done(step, global_batch, n_train), "images": images,
        "n_train": n_train, "session_wall_s": wall_s, "session_train_s": session_train_s,
        "session_eval_s": session_eval_s, "train_time_s": train_time_s,
        "img_per_s": img_s, "img_per_s_per_device": img_s / devices,
        "devices": devices, "device": device, "device_hours": wall_s * devices / 3600,
        "mfu": mfu(img_s / devices, flops_per_image, peak_tflops),
        "peak_tflops": peak_tflops, "peak_source": peak_source,
        "recompiles_after_first_step": recompiles, "flops_per_image": flops_per_image,
        "final": {k: v for k, v in evals[-1].items() if k.endswith("_top1")} if evals else {},
        "tpu_img_per_s": tpu_img_s, "tpu_ref_s": images / tpu_img_s,
        "tpu_ref_300ep_pace_s": images * TPU_300EP_S / (300 * IMAGENET_TRAIN),
        "projected_full_run_s": total_images / img_s, "tpu_ref_full_run_s": total_images / tpu_img_s}


STEADY_STEPS = 200   # fewer steps in a session: its speed figures carry a caveat


def summary_text(s):
    """The printout of a summary() dict."""
    gpu = "GPU" if s["device"] != "cpu" else "device"
    final = ", ".join(f"{k[:-5]} {v:.2%}" for k, v in s["final"].items() if v is not None)
    here = s["images"] / s["img_per_s"]
    lines = [
        f"== summary: {s['folder']} ==",
        f"steps {s['steps']:,} of {s['total_steps']:,} = {s['epochs_run']:.2f} epochs of "
        f"{s['n_train']:,} images; this session: {s['session_steps']:,} steps, "
        f"{duration(s['session_wall_s'])} wall-clock ({duration(s['session_train_s'])} in "
        f"steps, {duration(s['session_eval_s'])} in evals)",
        f"speed {s['img_per_s']:,.1f} img/s ({s['img_per_s_per_device']:,.1f} per device, "
        f"compilation left out); {s['device_hours']:.4f} {gpu}-hours on {s['devices']} x "
        f"{s['device']}",
        f"MFU {s['mfu']:.1%} of {s['peak_tflops']:,.4g} TFLOP/s per device ({s['peak_source']}); "
        f"{s['flops_per_image'] / 1e9:.3f} GFLOP per training image"
        + (f"; recompiles after the first step: {s['recompiles_after_first_step']}"
           if s["recompiles_after_first_step"] is not None else ""),
        "final top-1: " + (final or "no eval set configured"),
        f"TPUv3-8 reference (ViT-S/16 at 224 px: 90 ep in 6 h 30 = {s['tpu_img_per_s']:,.0f} "
        f"img/s; 300 ep in under 24 h): this run's {s['images']:,} images "
        f"({s['epochs_run']:.2f} epochs) take it {duration(s['tpu_ref_s'])} (300-ep pace: "
        f"under {duration(s['tpu_ref_300ep_pace_s'])}); here {duration(here)} at the steady "
        f"speed, {duration(s['train_time_s'])} measured ({ratio(here / s['tpu_ref_s'])} the "
        f"reference's time)"]
    if s["steps"] < s["total_steps"]:
        lines.append(f"projection to all {s['total_steps']:,} steps: "
                     f"{duration(s['projected_full_run_s'])} at this speed vs "
                     f"{duration(s['tpu_ref_full_run_s'])} for the reference")
    if s["session_steps"] < STEADY_STEPS:
        lines.append(f"(not a steady-state measure: this session ran {s['session_steps']:,} "
                     f"steps{' after a resume' if s['session_steps'] < s['steps'] else ''}; "
                     f"speed, MFU, the time ratio and the projection need {STEADY_STEPS:,} or "
                     f"more steps past compilation)")
    if (s["variant"], s["img_size"]) != ("S/16", 224):
        lines.append(f"(not like for like: ViT-{s['variant']} at {s['img_size']} px here, "
                     f"ViT-S/16 at 224 px in the reference)")
    return "\n".join(lines)


def plot(log, path):
    """Train loss, learning rate and eval top-1 against the step, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    train = [r for r in log if r.get("train_loss") is not None]
    evals = [r for r in log if any(k.endswith("_top1") for k in r)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([r["step"] for r in train], [r["train_loss"] for r in train])
    axes[0].set(title="train loss (soft-target xent)", xlabel="step")
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1].set(title="learning rate", xlabel="step")
    for key in sorted({k for r in evals for k in r if k.endswith("_top1")}):
        points = [(r["step"], r[key]) for r in evals if r.get(key) is not None]
        axes[2].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key[:-5])
    axes[2].set(title="eval top-1", xlabel="step")
    if evals:
        axes[2].legend()
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
