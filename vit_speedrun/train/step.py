"""The optimization step, as train_vit.py trains and benchmark.py times it: big_vision's
schedule, the soft-target cross-entropy, AdamW with decay on kernels only, the global-norm
clip, compile and DDP as the trainer applies them, and one step with or without gradient
accumulation. Every function returns device tensors without a host sync."""
import math

import torch
import torch.nn.functional as F

from vit_speedrun.models import vit


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


def compile_model(model, mode="default"):
    """torch.compile as the trainer uses it on GPU (benchmark.py shares it)."""
    return torch.compile(model, mode=None if mode == "default" else mode)


def wrap_ddp(model, device):
    """DDP with the gradients as views into its all-reduce buckets (no copy in and out of
    them) and a static graph (the same parameters every step): the same numbers, and
    0.5 ms of a 17.2 ms step saved on an H100 (one nccl rank, compiled, batch 128;
    README 'Speed')."""
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None,
        gradient_as_bucket_view=True, static_graph=True)


def backward(model, images_nchw, targets, precision, scale=1):
    """Forward (bf16 autocast unless precision='fp32'), soft-target xent, and the backward
    of loss / scale (accumulated into the gradients). Returns the loss, detached."""
    with torch.autocast(images_nchw.device.type, dtype=torch.bfloat16,
                        enabled=precision == "bf16"):
        logits = model(images_nchw)
    loss = soft_xent(logits, targets)
    (loss / scale if scale != 1 else loss).backward()
    return loss.detach()


def apply_gradients(optimizer, params, grad_clip_norm):
    """Global-norm clip and AdamW step on the accumulated gradients; returns the norm."""
    grad_norm = clip_global_norm_(params, grad_clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.detach()


def accumulation_step(model, optimizer, params, micro, k, precision, grad_clip_norm):
    """optimization_step over k micro-batches (an iterable of (images_nchw, targets), each
    used before the next is drawn): each one's mean loss / k backpropagated, so that the
    gradient is the mean over them, as over k ranks; then clip and AdamW step. Under DDP
    every backward all-reduces (no_sync is not an option with wrap_ddp's static graph: the
    same sums, k times the traffic). Returns the mean loss and the gradient norm, detached."""
    model.train()
    total = 0.0
    for images, targets in micro:
        total = total + backward(model, images, targets, precision, k)
    return total / k, apply_gradients(optimizer, params, grad_clip_norm)


def optimization_step(model, optimizer, params, images_nchw, targets, precision, grad_clip_norm):
    """Forward (bf16 autocast unless precision='fp32'), soft-target xent, backward, global
    norm clip, AdamW step. The optimizer's lr is set by the caller. Returns detached
    (loss, grad_norm); no host sync."""
    model.train()
    loss = backward(model, images_nchw, targets, precision)
    return loss, apply_gradients(optimizer, params, grad_clip_norm)
