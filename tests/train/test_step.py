"""train/step.py: big_vision's schedule and the recipe's step count, AdamW's decay on kernels
only, the global-norm clip, the soft-target loss, and the trainer's DDP wrapping (the same
numbers as PyTorch's default).
The step inside whole runs is tested through train_vit.main in test_train_vit.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from vit_speedrun.models import vit
from vit_speedrun.train import step


def test_schedule_values_and_step_count():
    total = round(90 * 1_268_355 / 1024)
    assert total == 111_477  # RECIPE.md
    s = lambda t: step.schedule(t, total, 10_000)  # noqa: E731
    assert s(0) == 0.0  # warmup from exactly 0
    assert s(5_000) == pytest.approx(0.5, abs=1e-15)
    assert s(10_000) == 1.0
    assert s((10_000 + total) / 2) == pytest.approx(0.5, abs=1e-12)
    assert s(total) == 0.0
    assert s(60_000) == pytest.approx(0.5 * (1 + math.cos(math.pi * 50_000 / 101_477)))
    assert all(s(t) >= s(t + 997) for t in range(10_000, total, 997))


def test_optimizer_groups_and_decoupled_decay():
    torch.manual_seed(0)
    model = vit.ViT("mu/4", num_classes=5, img_size=16, posemb="learn", pool_type="tok")
    opt = step.build_optimizer(model, 1e-3, 0.1, (0.9, 0.999), 1e-8, "auto", "cpu")
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    # Kernels (Dense/Conv weights) decay; biases, LayerNorm, posemb and [cls] do not.
    assert decay == {n for n, p in model.named_parameters()
                     if p.ndim >= 2 and n not in ("pos_embedding", "cls")}
    assert decay | no_decay == set(names.values()) and not decay & no_decay
    assert {"pos_embedding", "cls", "embedding.bias", "norm.weight"} <= no_decay
    assert {"embedding.weight", "head.weight", "pre_logits.weight"} <= decay
    # One step with zero gradients: Adam's update is 0, the decay is lr * wd = 1e-4 of w.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 1e-3 * 0.1) if n in decay else before[n]
        assert torch.equal(p.detach(), expected), n


def test_clip_and_soft_xent():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    params[0].grad, params[1].grad = torch.tensor([3.0, 0, 0]), torch.tensor([[0, 4.0], [0, 0]])
    assert step.clip_global_norm_(params, 1.0).item() == pytest.approx(5.0)
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])).item() == pytest.approx(1.0)
    small = [torch.nn.Parameter(torch.zeros(2))]
    small[0].grad = torch.tensor([0.3, 0.4])
    step.clip_global_norm_(small, 1.0)
    assert torch.equal(small[0].grad, torch.tensor([0.3, 0.4]))
    logits, targets = torch.randn(4, 5), torch.softmax(torch.randn(4, 5), -1)
    assert step.soft_xent(logits, targets).item() == pytest.approx(
        F.cross_entropy(logits, targets).item(), rel=1e-6)


def test_wrap_ddp_changes_no_number(tmp_path):
    """The trainer's DDP (gradients as bucket views, static graph) gives the same losses and
    weights, bit for bit, as PyTorch's default DDP over 3 clipped AdamW steps: the gradients
    set to None between steps come back as bucket views, and clipping scales them in place."""
    import copy
    import torch.distributed as dist
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1),
                            rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = vit.ViT("mu/8", num_classes=4, img_size=32)
        runs = {"default": torch.nn.parallel.DistributedDataParallel(copy.deepcopy(model)),
                "trainer": step.wrap_ddp(copy.deepcopy(model), torch.device("cpu"))}
        assert runs["trainer"].gradient_as_bucket_view and runs["trainer"].static_graph
        images = torch.randn(3, 8, 3, 32, 32)
        targets = torch.softmax(torch.randn(3, 8, 4) * 3, dim=-1)
        losses = {}
        for name, ddp in runs.items():
            opt = step.build_optimizer(ddp.module, 1e-2, 0.1, (0.9, 0.999), 1e-8,
                                       "auto", "cpu")
            params = [p for p in ddp.module.parameters() if p.requires_grad]
            losses[name] = [step.optimization_step(ddp, opt, params, images[i], targets[i],
                                                   "fp32", 0.05)[0].item()
                            for i in range(3)]
        assert losses["default"] == losses["trainer"] and len(set(losses["trainer"])) == 3
        for a, b in zip(runs["default"].module.parameters(), runs["trainer"].module.parameters()):
            assert torch.equal(a, b)
    finally:
        dist.destroy_process_group()
