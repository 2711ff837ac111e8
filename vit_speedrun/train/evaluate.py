"""Evaluation as big_vision runs it: top-1 on minival, val, ReaL and v2.

Each set is read with `decode|resize_small(round(img_size / crop_ratio))|central_crop(
img_size)|value_range(-1, 1)` (256 and 224 by default; ffcv_ops.EvalDecoder, TF's area
resize bit for bit), raw weights, no test-time flips (RECIPE.md, "Eval
preprocessing"). Each rank scores a disjoint strided shard of every set (no padding), and
torchmetrics sums the counts over the ranks, so the reduced top-1 is exact.
"""
import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from ffcv.fields.basics import IntDecoder
from ffcv.fields.ndarray import NDArrayDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import ToDevice, ToTensor

from vit_speedrun.train import loaders
from vit_speedrun.pp import ffcv_ops

SETS = ("minival", "val", "v2")


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


def eval_loaders(sidecars, device, rank, world_size, batch_per_rank, num_workers, in_memory,
                 real, img_size, crop_ratio):
    """{set name: (with ReaL, Loader)} for the eval sets among `sidecars` ({name: (path,
    sidecar)}), this rank's shard of each."""
    to_device = [ToTensor(), ToDevice(device, non_blocking=True)]
    out = {}
    for name in SETS:
        if name not in sidecars:
            continue
        path, meta = sidecars[name]
        with_real = name == "val" and real
        pipelines = {
            "image": [ffcv_ops.EvalDecoder(img_size, round(img_size / crop_ratio)),
                      ffcv_ops.Normalize(), *to_device],
            "label": [IntDecoder(), *to_device],
            "real": [NDArrayDecoder(), *to_device] if with_real else None}
        out[name] = with_real, Loader(
            path, batch_size=batch_per_rank, num_workers=num_workers, os_cache=in_memory,
            order=OrderOption.SEQUENTIAL, drop_last=False,
            indices=np.arange(rank, meta["num_images"], world_size), pipelines=pipelines)
        loaders.LOADERS.append(out[name][1])
    return out


@torch.no_grad()
def evaluate(model, sets, device, num_classes, precision):
    """{'<set>_top1', '<set>_loss' (mean cross-entropy; NaN stays NaN), 'real_top1'} over
    every rank, for the model in eval mode (put back in train mode after)."""
    model.eval()
    record = {}
    for name, (with_real, loader) in sets.items():
        top1 = torchmetrics.classification.MulticlassAccuracy(
            num_classes, average="micro").to(device)
        loss = torchmetrics.MeanMetric(nan_strategy="disable").to(device)
        real = ReaLAccuracy().to(device)
        lead = loaders.HostLead(device)
        for batch in lead.paced(loaders.epoch_batches(loader)):
            images, labels = batch[0].permute(0, 3, 1, 2), batch[1].view(-1).long()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(images)
            preds = logits.argmax(dim=-1)
            top1.update(preds, labels)
            loss.update(F.cross_entropy(logits.float(), labels, reduction="none"))
            if with_real:
                real.update(preds, batch[2])
        record[f"{name}_top1"] = top1.compute().item()
        record[f"{name}_loss"] = loss.compute().item()
        if with_real:
            record["real_top1"] = real.compute().item()
    model.train()
    return record
