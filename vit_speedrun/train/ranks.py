"""Which process of a torchrun job this is, and how the ranks agree with each other.

train_vit.py runs as one rank of `torchrun --nproc_per_node=N` (on one node or several),
as one task of `srun` under SLURM (one process per GPU: SLURM_PROCID, SLURM_NTASKS and
SLURM_LOCALID stand in for torchrun's variables; MASTER_ADDR names the first node), or as a
plain `python train_vit.py` (one process, no process group). A single torchrun process
still forms a process group and wraps the model in DDP: the path an 8-GPU run takes,
testable on one GPU.

The ranks agree on flags (a SIGTERM, a non-finite value) at every step. On a GPU those
votes go over a second, gloo (CPU) group: a vote over nccl would wait for the GPU and end
the host's lead over it every step.
"""
import os

import torch
import torch.distributed as dist

from vit_speedrun.cli import ConfigError


def launcher_env(environ=None):
    """(rank, world_size, local_rank): torchrun's variables; else, in a SLURM job step of
    several tasks, SLURM's, which it also exports as torchrun's for the process group (its
    rendezvous at MASTER_ADDR:MASTER_PORT, port 29500 unless set); else one process."""
    env = os.environ if environ is None else environ
    if "RANK" in env or int(env.get("SLURM_NTASKS", 1)) <= 1 or "SLURM_PROCID" not in env:
        return (int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                int(env.get("LOCAL_RANK", 0)))
    if "MASTER_ADDR" not in env:
        raise ConfigError(
            "SLURM started this as one of several tasks, but MASTER_ADDR is not set: put "
            "`export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)` "
            "in the batch script before `srun python train_vit.py ...` (README, SLURM), or "
            "launch with `srun torchrun ...` instead")
    env.update(RANK=env["SLURM_PROCID"], WORLD_SIZE=env["SLURM_NTASKS"],
               LOCAL_RANK=env.get("SLURM_LOCALID", "0"))
    env.setdefault("MASTER_PORT", "29500")
    return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])


class Ranks:
    """This process's rank, world size and device, from torchrun's (or SLURM's) environment
    variables; connect() joins the process group (nccl on a GPU, gloo on CPU) when there is
    one."""

    def __init__(self):
        self.rank, self.world_size, self.local_rank = launcher_env()
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

    def per_rank(self, name, global_batch):
        """Each rank's share of the global batch setting `name`; a ConfigError when it does
        not split evenly."""
        if global_batch <= 0 or global_batch % self.world_size:
            raise ConfigError(f"{name}={global_batch} does not split evenly over "
                              f"{self.world_size} ranks: use a positive multiple of "
                              f"{self.world_size}")
        return global_batch // self.world_size

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
