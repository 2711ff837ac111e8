"""The tiny training runs of the trainer's tests (conftest.py's `splits`, `reference` and
`two_ranks` fixtures build them once per session).

The data: 4 classes of 40x36 JPEG views of scikit-image's photographs, converted by
write_ffcv.convert into train / minival / val (with ReaL sets) / v2. The model: ViT-mu/8 at
32 px (16 tokens). Training runs go through train_vit.main() in the test process (loaders
compile once per process), except the 2-rank runs, which are torchrun's. One uninterrupted
12-step run (`reference`) is what resumed, preempted and distributed runs are compared with.
"""
import json
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

import write_ffcv
from conftest import ROOT, real_photos

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
BATCH, STEPS, STEPS_PER_EPOCH = 16, 12, 5  # 86 train images: 5 batches of 16 per epoch


def write_folder(root, per_class, rng, names=PHOTOS, numeric=False):
    photos = real_photos()
    for c, name in enumerate(names):
        folder = root / (str(c) if numeric else f"n0000{c}")
        folder.mkdir(parents=True)
        image = photos[name]
        for i in range(per_class):
            h, w = image.shape[:2]
            side = int(min(h, w) * rng.uniform(0.5, 0.9))
            y, x = rng.integers(0, h - side), rng.integers(0, w - side)
            Image.fromarray(image[y:y + side, x:x + side]).resize((40, 36)).save(
                folder / f"{name}_{i:03d}.jpg", quality=90)


def write_splits(root):
    """The tiny splits as .beton files under `root` (and a few deliberately wrong ones for the
    config errors): {name: path}."""
    rng = np.random.default_rng(0)
    write_folder(root / "train", 24, rng)
    write_folder(root / "val", 6, rng)
    write_folder(root / "v2", 4, rng, numeric=True)
    write_folder(root / "other", 3, rng, names=PHOTOS[:3])
    # ReaL sets in file-name order: mostly the true class, some with two labels, some empty.
    names = sorted(p.name for p in (root / "val").rglob("*.jpg"))
    label = {n: PHOTOS.index(n.rsplit("_", 1)[0]) for n in names}
    real = [[] if i % 5 == 0 else [label[n], (label[n] + 1) % 4] if i % 3 == 0 else [label[n]]
            for i, n in enumerate(names)]
    (root / "real.json").write_text(json.dumps(real))
    opts = dict(num_workers=1, progress=False, minival_fraction=0.1)
    paths = {}
    for name, folder, split, extra in (
            ("train", "train", "train", {}), ("minival", "train", "minival", {}),
            ("val", "val", "val", {"real_labels": root / "real.json"}),
            ("v2", "v2", "v2", {"classes_from": root / "train.beton"}),
            ("v2_numeric", "v2", "v2", {}), ("val_noreal", "val", "val", {}),
            ("other", "other", "val", {})):
        paths[name] = root / f"{name}.beton"
        write_ffcv.convert(root / folder, paths[name], split, **opts, **extra)
    assert write_ffcv.read_sidecar(paths["train"])["num_images"] == 86
    return paths


def args(splits, folder, *extra, evals=True):
    """A 12-step run (2.2 epochs of 86 images, batch 16) of ViT-mu/8 at 32 px."""
    base = [f"--data.train_dataset={splits['train']}", "--data.num_workers=2",
            "--model.variant=mu/8", "--model.img_size=32", "--training.epochs=2.2",
            f"--training.batch_size={BATCH}", "--optimizer.warmup_steps=5",
            "--eval.every=5", "--eval.batch_size=16", f"--logging.folder={folder}",
            "--logging.log_every=1", "--logging.checkpoint_every=5", "--logging.progress=0"]
    if evals:
        base += [f"--data.minival_dataset={splits['minival']}",
                 f"--data.val_dataset={splits['val']}", "--data.real=1",
                 f"--data.v2_dataset={splits['v2']}"]
    return base + list(extra)


def read_log(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def load_checkpoint(folder):
    return torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)


def assert_same_state(a, b):
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for i, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][i][key]), (i, key)


def strict_log(folder):
    """log.jsonl parsed by a strict JSON parser: a bare NaN or Infinity fails the test."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return [json.loads(line, parse_constant=refuse)
            for line in (folder / "log.jsonl").read_text().splitlines()]


def torchrun_two_ranks(splits, folder, script="train_vit.py"):
    """A 6-step run on 2 gloo ranks through torchrun (a real launcher and its processes),
    logged at the step-5 eval and at the end."""
    argv = args(splits, folder, "--data.num_workers=1", "--training.epochs=1.2",
                "--augment.mix_on_device=on", "--logging.log_every=6")
    env = dict(os.environ, NUMBA_CACHE_DIR=os.environ["NUMBA_CACHE_DIR"], OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
