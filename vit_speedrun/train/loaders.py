"""FFCV plumbing of train_vit.py: the input files checked before anything is built, the
train loader and its order that resumes mid-epoch, loader threads that fail loudly instead
of hanging, and the host kept one batch ahead of the GPU."""
import queue
import sys
import threading
from pathlib import Path

import numpy as np
import torch
from fastargs.decorators import param
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.traversal_order.base import TraversalOrder
from torch.utils.data import DistributedSampler

from vit_speedrun.cli import ConfigError
from vit_speedrun.data.betons import ConversionError, check_beton, read_sidecar

# Every ffcv Loader jits its own numba dispatchers of the same functions (ffcv's imdecode...).
# When an old one is garbage-collected while a new Loader compiles in its thread, numba 0.68
# raises KeyError there. Loaders made in this process therefore live as long as it does
# (one run = a few loaders; it matters when main() runs several times, as in the tests).
LOADERS = []


def train_loader(path, pipelines, clock, device, *, rank, world_size, distributed, batch_size,
                 num_workers, in_memory, seed, mix_on_device, mixup_alpha,
                 on_device_already=False, accum=1):
    """The run's one train Loader: ffcv_ops.train_pipelines(...) `pipelines`, then to the
    device; with mix_on_device the images go as uint8 and are normalised and mixed there
    (ffcv_ops.device_tail: float32 NCHW out), else they arrive float32 NHWC.
    on_device_already: the image pipeline ends on the device (augment.where=device).
    accum: micro-batches per step (ResumableOrder); batch_size is then a micro-batch's."""
    from ffcv.loader import Loader
    from ffcv.transforms import ToDevice, ToTensor

    from vit_speedrun.pp import ffcv_ops
    to_device = [ToTensor(), ToDevice(device, non_blocking=True)]
    image_tail = ([] if on_device_already else
                  ffcv_ops.device_tail(clock, device, mixup_alpha) if mix_on_device
                  else to_device)
    loader = Loader(path, batch_size=batch_size, num_workers=num_workers, os_cache=in_memory,
                    order=ResumableOrder(rank, world_size, accum), distributed=distributed,
                    seed=seed,
                    drop_last=True, pipelines={"image": pipelines["image"] + image_tail,
                                               "label": pipelines["label"] + to_device})
    LOADERS.append(loader)
    return loader


def _loader_thread_died(args, default_hook=threading.excepthook):
    """threading.excepthook: an ffcv epoch thread that raises never puts its end marker,
    so its consumer would wait forever. Mark it failed and wake the consumer."""
    default_hook(args)
    if isinstance(args.thread, EpochIterator):
        args.thread.failed = args.exc_value
        args.thread.output_queue.put(None)


threading.excepthook = _loader_thread_died


def raise_if_failed(epoch_iterator):
    """Call when an ffcv epoch ended: raises if it ended because its thread died."""
    if getattr(epoch_iterator, "failed", None) is not None:
        raise RuntimeError("the ffcv loader thread failed (traceback above)") \
            from epoch_iterator.failed


def epoch_batches(loader):
    """One epoch of an ffcv loader, raising if its thread died instead of ending early."""
    epoch_iterator = iter(loader)
    yield from epoch_iterator
    raise_if_failed(epoch_iterator)


def micro_batches(first, batches, k, step):
    """The k micro-batches of optimizer step `step` (training.grad_accum = k): `first`, then
    the next k - 1 of the epoch iterator `batches`, each taken only once the one before was
    used (the loader reuses their memory)."""
    yield first
    for j in range(1, k):
        more = next(batches, None)
        if more is None:
            raise_if_failed(batches)
            raise RuntimeError(f"the epoch ended after {j} of the {k} micro-batches of "
                               f"step {step}")
        yield more


def stop_iterator(batches):
    """End an ffcv epoch iterator left mid-epoch: its thread may block on a full queue."""
    batches.close()
    while batches.is_alive():
        try:
            batches.output_queue.get(timeout=0.05)
        except queue.Empty:
            pass
    batches.join()


class HostLead:
    """Keeps the host at most one batch ahead of the GPU, so FFCV may reuse its buffers.

    FFCV 1.0.2 decodes each batch into one of batches_ahead + 2 pinned host buffers and
    copies it to the GPU asynchronously; before it decodes into a buffer again it waits
    only on the GPU side. With a step that queues its kernels without a host sync (ours),
    a host running ahead of a slow GPU would overwrite a buffer whose copy has not yet
    run, and the GPU would train on a later batch's pixels. Call wait() before taking a
    batch and mark() right after: the host then takes batch k + 1 only once the GPU has
    reached batch k (its copy done, step k - 1 finished). A no-op off CUDA.
    """

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.event = None

    def wait(self):
        if self.event is not None:
            self.event.synchronize()

    def mark(self):
        if self.cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def take(self, batches):
        """The next batch of an ffcv epoch iterator (None at its end), marked; wait() first."""
        batch = next(batches, None)
        if batch is not None:
            self.mark()
        return batch

    def paced(self, batches):
        """Yield from an ffcv epoch iterator with wait()/mark() around each batch."""
        while True:
            self.wait()
            batch = self.take(batches)
            if batch is None:
                return
            yield batch


class _EpochOrder:
    """A TraversalOrder wrapper for the next epoch only (FFCV 1.0.2 Loader internals): drops
    the first `skip` samples (resume) and, with drop_last, the final partial batch, which
    FFCV 1.0.2's EpochIterator yields despite drop_last=True; then puts the order back."""

    def __init__(self, loader, skip):
        self.loader, self.inner, self.skip = loader, loader.traversal_order, skip

    def sample_order(self, epoch):
        self.loader.traversal_order = self.inner
        order = self.inner.sample_order(epoch)
        batch = self.loader.batch_size
        end = len(order) // batch * batch if self.loader.drop_last else len(order)
        return order[self.skip:end]


def epoch_iterator(loader, clock, epoch, first_batch=0):
    """iter(loader) for `epoch`, starting at batch `first_batch` (resume mid-epoch).

    Sets the clock (augmentation draws and mixup batch ordinals) and FFCV's own epoch
    counter (the shuffling order), and makes FFCV skip the epoch's first batches without
    decoding them. Per rank under distributed=True: batch k of this rank's order. With
    drop_last, no partial final batch (FFCV 1.0.2 would yield one).
    If the clock's previous iterator is still running (the caller broke out of an epoch),
    it is closed and joined first: its thread would otherwise keep preparing batches and
    advance the new epoch's batch counters.
    """
    if first_batch < 0 or first_batch > len(loader):
        raise ValueError(f"epoch_iterator: first_batch {first_batch} outside [0, "
                         f"{len(loader)}] batches of this loader")
    previous = getattr(clock, "_iterator", None)
    if previous is not None and previous.is_alive():
        previous.close()
        previous.join()
    clock.set_epoch(epoch, first_batch)
    loader.next_epoch = epoch
    loader.traversal_order = _EpochOrder(loader, first_batch * loader.batch_size)
    clock._iterator = iter(loader)
    return clock._iterator


class ResumableOrder(TraversalOrder):
    """ffcv's RANDOM order in distributed mode (DistributedSampler, shuffle, padded to the
    world size; seed + epoch), cut to whole batches (ffcv 1.0.2 ignores drop_last). A resumed
    epoch starts later through epoch_iterator, which skips batches without
    decoding them. ffcv builds a custom order by calling it with the Loader. The rank and
    world size are explicit, so one process needs no process group.
    accum > 1 (training.grad_accum): the Loader's batches are micro-batches, and step s of
    this rank is made of the s-th batches of `accum` virtual ranks (rank * accum + j of
    world_size * accum), in turn: the samples that many more ranks would take at step s."""

    def __init__(self, rank, world_size, accum=1):
        self.rank, self.world_size, self.accum = rank, world_size, accum

    def __call__(self, loader):
        TraversalOrder.__init__(self, loader)
        return self

    def _rank_order(self, epoch, rank, world):
        sampler = DistributedSampler(self.indices, num_replicas=world, rank=rank,
                                     shuffle=True, seed=self.seed, drop_last=False)
        sampler.set_epoch(epoch)
        order = self.indices[np.fromiter(iter(sampler), dtype=np.int64)]
        batch = self.loader.batch_size
        return order[:len(order) // batch * batch]

    def sample_order(self, epoch):
        if self.accum == 1:
            return self._rank_order(epoch, self.rank, self.world_size)
        batch, k = self.loader.batch_size, self.accum
        orders = [self._rank_order(epoch, self.rank * k + j, self.world_size * k)
                  for j in range(k)]
        steps = min(len(o) for o in orders) // batch
        return np.concatenate([orders[j][s * batch:(s + 1) * batch]
                               for s in range(steps) for j in range(k)]).astype(np.int64)


@param("data.train_dataset")
@param("data.minival_dataset")
@param("data.val_dataset")
@param("data.real")
@param("data.v2_dataset")
def check_dataset_files(world_size, train_dataset, minival_dataset, val_dataset, real, v2_dataset,
                        warn=True):
    """Every input exists, is a whole .beton, has its sidecar, and all splits share one class
    list; warns (if warn) of sets not stored as the reference's pixels. Returns
    {split: (path, sidecar)}."""
    sidecars = {}
    if not train_dataset:
        raise ConfigError("data.train_dataset is empty: a run needs its train set. Convert it "
                          "with write_ffcv.py --cfg.split=train and pass its .beton")
    for name, path in (("train", train_dataset), ("minival", minival_dataset),
                       ("val", val_dataset), ("v2", v2_dataset)):
        if not path:
            continue
        if not Path(path).is_file():
            skip = "" if name == "train" else f", or set data.{name}_dataset='' to skip it"
            raise ConfigError(f"data.{name}_dataset: {path} does not exist. Convert the "
                              f"split with write_ffcv.py{skip}")
        try:
            sidecars[name] = (path, read_sidecar(path))
            samples = check_beton(path)
        except (ConversionError, ValueError) as e:
            raise ConfigError(f"data.{name}_dataset: {e}") from None
        if samples != sidecars[name][1]["num_images"]:
            raise ConfigError(f"data.{name}_dataset: {path} holds {samples:,} images, its "
                              f"sidecar {path}.json says {sidecars[name][1]['num_images']:,}: "
                              f"they come from different conversions. Convert it again.")
    classes = sidecars["train"][1]["classes"]
    for name, (path, meta) in sidecars.items():
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
        if meta["num_images"] < world_size:
            raise ConfigError(f"{path} holds {meta['num_images']} images, fewer than the "
                              f"{world_size} ranks")
    if real and not (val_dataset and sidecars["val"][1].get("has_real")):
        raise ConfigError(f"data.real=true needs data.val_dataset written with ReaL labels "
                          f"(write_ffcv.py --cfg.split=val --cfg.real_labels=real.json); "
                          f"{val_dataset or 'no val set'} has none. Or set data.real=false")
    for name, (path, meta) in sidecars.items():
        if not meta.get("faithful") and warn:
            opts = meta.get("settings", {})
            print(f"warning: {path} is stored write_mode={opts.get('write_mode')}, "
                  f"max_resolution={opts.get('max_resolution')}: its {name} pixels differ "
                  f"from the reference's (write_ffcv.py's default, original, is faithful)",
                  file=sys.stderr)
    return sidecars
