"""Where the trainer's time per step goes beyond `benchmark.py step`'s: one process, one
DDP rank (nccl on a GPU, gloo on a CPU), the trainer's own optimization step; each row adds
one thing the trainer does per step. Run on a lent GPU box (README "Speed"), not by CI:

    python .ci/trainer_gap.py                    # ViT-S/16, batch 128, compiled (CUDA graphs)

Rows: the bare step; + the loader's share on the device (lr set, the uint8 batch copied
from pinned memory, ffcv_ops.DeviceNormalizeMixup, report.SpeedWindows' loss sums);
DDP with PyTorch's defaults, then as the trainer wraps it (train/step.py's wrap_ddp); and with
busy CPU processes standing in for the loader threads. ms per step, median of 3 timings.
"""
import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from vit_speedrun.pp import ffcv_ops  # noqa: E402
from vit_speedrun.train import report  # noqa: E402
from vit_speedrun.train import step as train_step  # noqa: E402
from vit_speedrun.models import vit  # noqa: E402


def busy(stop):
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x += i


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="S/16")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30, help="timed steps, 3 times")
    p.add_argument("--busy", type=int, default=15, help="busy CPU processes in the last rows")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda", 0) if cuda else torch.device("cpu")
    n, s = args.batch_size, args.img_size
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1,
                            **({"device_id": dev} if cuda else {}))

    def make(ddp):
        torch.manual_seed(0)
        raw = vit.ViT(args.variant, num_classes=1000, img_size=s).to(dev)
        opt = train_step.build_optimizer(raw, 1e-3, 0.1, (0.9, 0.999), 1e-8, "auto", dev.type)
        params = [q for q in raw.parameters() if q.requires_grad]
        model = train_step.compile_model(raw, "reduce-overhead") if cuda else raw
        if ddp == "default":
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dev] if cuda else None)
        elif ddp == "trainer":
            model = train_step.wrap_ddp(model, dev)
        return model, opt, params

    u8_host = torch.randint(0, 256, (n, s, s, 3), dtype=torch.uint8)
    u8_host = u8_host.pin_memory() if cuda else u8_host
    buffers = (torch.empty(n, 3, s, s, device=dev), torch.empty(n, 3, s, s, device=dev))
    mix = ffcv_ops.DeviceNormalizeMixup(ffcv_ops.AugmentClock(0)).generate_code()
    targets = torch.softmax(torch.randn(n, 1000, device=dev), -1)
    fixed = torch.rand(n, 3, s, s, device=dev) * 2 - 1

    def run(name, model, opt, params, extras):
        sums = report.SpeedWindows(dev)

        def step(i):
            images = fixed
            if extras:
                for g in opt.param_groups:
                    g["lr"] = 1e-3 * (1 + i % 7) / 7
                # the loader's device tail on a fresh copy of the uint8 batch
                images = mix(u8_host.to(dev, non_blocking=True).permute(0, 3, 1, 2), buffers)
            loss, norm = train_step.optimization_step(model, opt, params, images, targets,
                                                      "bf16", 1.0)
            if extras:
                sums.add(loss, norm)
        for i in range(8):
            step(i)
        times = []
        for _ in range(3):
            report.sync(dev)
            t = time.perf_counter()
            for i in range(args.steps):
                step(i)
            report.sync(dev)
            times.append((time.perf_counter() - t) / args.steps * 1e3)
        ms = statistics.median(times)
        print(f"RESULT {name:46s} {ms:7.2f} ms {n / ms * 1e3:8,.0f} img/s  "
              f"(runs {', '.join(f'{t:.2f}' for t in times)})", flush=True)

    print(f"trainer_gap: ViT-{args.variant} at {s}px, batch {n} on "
          f"{torch.cuda.get_device_name(dev) if cuda else 'cpu'}, torch {torch.__version__}")
    m = make(None)
    run("step (benchmark.py step)", *m, False)
    run("step + the loader's device work", *m, True)
    m = make("default")
    run("DDP, PyTorch defaults", *m, False)
    run("DDP, PyTorch defaults + the loader's work", *m, True)
    m = make("trainer")
    run("DDP as the trainer wraps it", *m, False)
    run("DDP as the trainer wraps it + the loader's work", *m, True)
    stop = mp.Event()
    procs = [mp.Process(target=busy, args=(stop,), daemon=True) for _ in range(args.busy)]
    for q in procs:
        q.start()
    try:
        run(f"  the same, {args.busy} busy CPU processes", *m, True)
    finally:
        stop.set()
        for q in procs:
            q.join()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
