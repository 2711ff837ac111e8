"""Which process of a torchrun job this is, and how the ranks agree with each other.

train_vit.py runs as one rank of `torchrun --nproc_per_node=N` (on one node or several),
or as a plain `python train_vit.py` without torchrun's environment (one process, no process
group). A single torchrun process still forms a process group and wraps the model in DDP:
the path an 8-GPU run takes, testable on one GPU.

The ranks agree on flags (a SIGTERM, a non-finite value) at every step. On a GPU those
votes go over a second, gloo (CPU) group: a vote over nccl would wait for the GPU and end
the host's lead over it every step.
"""
import os

import torch
import torch.distributed as dist


class Ranks:
    """This process's rank, world size and device, from torchrun's environment variables;
    connect() joins the process group (nccl on a GPU, gloo on CPU) when there is one."""

    def __init__(self):
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.is_main = self.rank == 0
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        else:
            self.device = torch.device("cpu")
            # Denormal floats (tiny Adam moments and activations of the zero-initialised
            # head) slow x86 float math by 10x here; TPUs and GPU tensor cores flush them too.
            torch.set_flush_denormal(True)
        self.distributed = self.world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ
        self.cpu_group = None

    def connect(self):
        """Join the process group (after the settings are checked: a bad one then stops
        every rank with its message, not a rendezvous error)."""
        if self.distributed:
            cuda = self.device.type == "cuda"
            dist.init_process_group("nccl" if cuda else "gloo",
                                    device_id=self.device if cuda else None)
            self.cpu_group = dist.new_group(backend="gloo") if cuda else dist.group.WORLD

    def any(self, flag):
        """True on every rank if `flag` is true on any (a vote over the CPU group)."""
        if self.world_size == 1:
            return bool(flag)
        vote = torch.tensor([int(bool(flag))])
        dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return bool(vote.item())

    def sum(self, tensor):
        """`tensor` (on the device) summed over the ranks, in place; returns it."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def gather(self, tensor):
        """Every rank's copy of a CPU `tensor`, stacked in rank order: [world_size, ...]."""
        if not self.distributed:
            return tensor[None]
        every = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(every, tensor, group=self.cpu_group)
        return torch.stack(every)

    def barrier(self):
        if self.distributed:
            dist.barrier()

    @staticmethod
    def close():
        if dist.is_initialized():
            dist.destroy_process_group()
