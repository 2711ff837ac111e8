"""vit_speedrun/models/vit.py against RECIPE.md "Model": size, initialisers, posemb, switches,
decay groups, FLOPs.

The model is checked against an independent plain-torch forward (explicit softmax
attention with separate q, k, v), so the fused-qkv/SDPA layout cannot silently drift.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vit_speedrun.models import vit

TRUNC_STD = .87962566103423978  # std of a standard normal truncated at +-2


@pytest.fixture(scope="module")
def s16():
    torch.manual_seed(0)
    return vit.ViT("S/16")


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_s16_parameter_count_and_switches(s16):
    assert n_params(s16) == 22_122_472
    with torch.device("meta"):
        assert n_params(vit.ViT("S/16", posemb="learn")) == 22_122_472 + 196 * 384
        assert n_params(vit.ViT("S/16", pool_type="tok")) == 22_122_472 + 384
        assert n_params(vit.ViT("S/16", rep_size=False)) == 22_122_472 - 384 * 384 - 384
    assert "pos_embedding" not in s16.state_dict()  # fixed sincos is a function of shapes


def test_variant_decoding():
    assert vit.decode_variant("S/16") == dict(width=384, depth=12, mlp_dim=1536, num_heads=6, patch_size=16)
    assert vit.decode_variant("Ti")["patch_size"] == 16  # big_vision's default patch
    assert vit.decode_variant("mu/2") == dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=2)
    for bad in ("X/16", "S/x", "S/0", "s/16"):
        with pytest.raises(ValueError, match="unknown ViT variant"):
            vit.decode_variant(bad)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        vit.ViT("mu/4", img_size=18)


def _check_lecun(w, fan_in):
    std = math.sqrt(1 / fan_in)
    assert abs(w.std().item() / std - 1) < 0.03
    assert abs(w.mean().item()) < 0.01 * std
    assert w.abs().max().item() <= 2 * std / TRUNC_STD * (1 + 1e-6)  # truncated at 2 "raw" std
    assert w.abs().max().item() > 1.9 * std / TRUNC_STD  # ... and reaches out there


def _check_xavier(w, fan_in, fan_out):
    limit = math.sqrt(6 / (fan_in + fan_out))
    assert abs(w.std().item() / (limit / math.sqrt(3)) - 1) < 0.03
    assert limit * 0.99 < w.abs().max().item() <= limit


def test_init_statistics(s16):
    d, m = 384, 1536
    _check_lecun(s16.embedding.weight, 3 * 16 * 16)
    _check_lecun(s16.pre_logits.weight, d)
    zeros = [s16.embedding.bias, s16.pre_logits.bias, s16.head.weight, s16.head.bias, s16.norm.bias]
    ones = [s16.norm.weight]
    for blk in s16.blocks:
        for i in range(3):  # q, k, v: each Xavier on its own 384x384; a fused 384x1152 init
            _check_xavier(blk.attn.qkv.weight[i * d:(i + 1) * d], d, d)  # would stay below 0.0625
        _check_xavier(blk.attn.out.weight, d, d)
        _check_xavier(blk.mlp.fc1.weight, d, m)
        _check_xavier(blk.mlp.fc2.weight, m, d)
        zeros += [blk.attn.qkv.bias, blk.attn.out.bias, blk.ln1.bias, blk.ln2.bias]
        ones += [blk.ln1.weight, blk.ln2.weight]
    assert all(torch.all(t == 0) for t in zeros) and all(torch.all(t == 1) for t in ones)
    mlp_bias = torch.cat([torch.cat([b.mlp.fc1.bias, b.mlp.fc2.bias]) for b in s16.blocks])
    assert abs(mlp_bias.std().item() / 1e-6 - 1) < 0.05 and torch.all(mlp_bias != 0)
    assert s16.blocks[0].ln1.eps == 1e-6 and s16.norm.eps == 1e-6


def test_init_of_the_ablation_switches():
    torch.manual_seed(1)
    model = vit.ViT("Ti/16", pool_type="tok", posemb="learn", head_zeroinit=False, rep_size=100)
    pe = model.pos_embedding.detach()
    assert pe.shape == (1, 196, 192)
    assert abs(pe.std().item() * math.sqrt(192) - 1) < 0.03
    assert pe.abs().max().item() > 3 / math.sqrt(192)  # plain normal, not truncated
    assert torch.all(model.cls == 0) and model.cls.shape == (1, 1, 192)
    _check_lecun(model.head.weight, 100)
    assert model.pre_logits.weight.shape == (100, 192) and torch.all(model.head.bias == 0)


def test_sincos_table_against_formula():
    h, w, width = 3, 5, 16  # non-square, so a row/column swap shows
    got = vit.sincos_2d(h, w, width).numpy()
    assert got.shape == (h * w, width) and got.dtype == np.float32
    omega = 1 / 10000 ** (np.arange(4) / 3)
    for r in range(h):
        for c in range(w):
            want = np.concatenate([np.sin(c * omega), np.cos(c * omega), np.sin(r * omega), np.cos(r * omega)])
            np.testing.assert_allclose(got[r * w + c], want, atol=1e-7)
    big = vit.sincos_2d(14, 14, 384).double().numpy()
    k, t = np.arange(96), np.arange(196)
    x, y = (t % 14)[:, None] * (1 / 10000 ** (k / 95)), (t // 14)[:, None] * (1 / 10000 ** (k / 95))
    np.testing.assert_allclose(big, np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], 1), atol=1e-7)
    with pytest.raises(ValueError, match="divisible by 4"):
        vit.sincos_2d(2, 2, 30)


def reference_forward(model, x):
    """The model's maths written out with plain ops: separate q/k/v, explicit softmax."""
    d, nh = model.width, model.blocks[0].attn.num_heads
    t = model.embedding(x).flatten(2).transpose(1, 2) + model.pos_embedding
    if model.pool_type == "tok":
        t = torch.cat([model.cls.expand(len(x), -1, -1), t], 1)
    for blk in model.blocks:
        a = F.layer_norm(t, (d,), blk.ln1.weight, blk.ln1.bias, 1e-6)
        wq, wk, wv = blk.attn.qkv.weight.split(d)
        bq, bk, bv = blk.attn.qkv.bias.split(d)
        heads = lambda z: z.unflatten(-1, (nh, d // nh)).transpose(1, 2)  # noqa: E731
        q, k, v = heads(a @ wq.T + bq), heads(a @ wk.T + bk), heads(a @ wv.T + bv)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // nh), -1) @ v
        t = t + att.transpose(1, 2).flatten(2) @ blk.attn.out.weight.T + blk.attn.out.bias
        a = F.layer_norm(t, (d,), blk.ln2.weight, blk.ln2.bias, 1e-6)
        g = a @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias
        g = 0.5 * g * (1 + torch.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3)))
        t = t + g @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
    t = F.layer_norm(t, (d,), model.norm.weight, model.norm.bias, 1e-6)
    z = t[:, 0] if model.pool_type == "tok" else t.mean(1)
    if model.pre_logits is not None:
        z = torch.tanh(z @ model.pre_logits.weight.T + model.pre_logits.bias)
    return z @ model.head.weight.T + model.head.bias if model.head is not None else z


@pytest.mark.parametrize("pool_type", ["gap", "tok"])
@pytest.mark.parametrize("posemb", ["sincos2d", "learn"])
@pytest.mark.parametrize("rep_size", [True, False, 24])
@pytest.mark.parametrize("head_zeroinit", [True, False])
def test_forward_every_switch(pool_type, posemb, rep_size, head_zeroinit):
    torch.manual_seed(0)
    model = vit.ViT("mu/4", num_classes=10, pool_type=pool_type, posemb=posemb, rep_size=rep_size,
                    head_zeroinit=head_zeroinit, img_size=(16, 12))
    with torch.no_grad():
        model.embedding.bias.normal_()  # give the zero-initialised [cls] token a path to matter
        if pool_type == "tok":
            model.cls.normal_()
        x = torch.rand(3, 3, 16, 12) * 2 - 1
        y = model(x)
        assert y.shape == (3, 10) and y.dtype == torch.float32
        if head_zeroinit:
            assert torch.all(y == 0)  # zero head: every logit 0 at init
            model.head.weight.normal_(std=0.1)
            y = model(x)
        torch.testing.assert_close(y, reference_forward(model, x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(y[0], y[1])
    with pytest.raises(ValueError, match=r"built for \(16, 12\)"):
        model(torch.zeros(1, 3, 16, 16))


def test_no_head_returns_features():
    model = vit.ViT("mu/2", num_classes=None, rep_size=False, img_size=8)
    assert model.head is None and model(torch.zeros(2, 3, 8, 8)).shape == (2, 32)
    assert vit.ViT("mu/2", num_classes=0, img_size=8)(torch.zeros(1, 3, 8, 8)).shape == (1, 32)


def test_param_groups():
    model = vit.ViT("mu/4", num_classes=10, pool_type="tok", posemb="learn", img_size=16)
    decay, no_decay = vit.param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    got_decay = {names[id(p)] for p in decay["params"]}
    got_none = {names[id(p)] for p in no_decay["params"]}
    want_decay = {"embedding.weight", "pre_logits.weight", "head.weight"} | {
        f"blocks.{i}.{n}.weight" for i in range(2) for n in ("attn.qkv", "attn.out", "mlp.fc1", "mlp.fc2")}
    assert got_decay == want_decay
    assert got_none == set(names.values()) - want_decay
    assert {"pos_embedding", "cls", "norm.weight", "blocks.0.mlp.fc1.bias"} <= got_none
    torch.optim.AdamW(vit.param_groups(model, 0.1), lr=1e-3)  # accepted as-is


def test_flops_s16():
    # per-image multiply-adds, written out: patch, 12 x (qkv + scores + AV + out + MLP), pre-logits, head
    n, d, m = 196, 384, 1536
    macs = n * 768 * d + 12 * (n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * m) + d * d + d * 1000
    assert vit.flops_per_image("S/16", training=False) == 2 * macs == 9_148_348_416
    assert vit.flops_per_image("S/16") == 27_445_045_248  # 3x forward
    assert vit.flops_per_image("S/16", img_size=384) > 3 * vit.flops_per_image("S/16")
    with pytest.raises(ValueError, match="variant string"):
        vit.flops_per_image(vit.ViT("mu/4", img_size=16), img_size=32)


@pytest.mark.parametrize("kw", [dict(), dict(pool_type="tok", rep_size=24, num_classes=10)])
def test_flops_match_torch_counter(kw):
    """Independent check: torch's FLOP counter on a real forward (math SDPA so bmm is counted)."""
    model = vit.ViT("mu/4", img_size=32, **kw)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32))
    assert counter.get_total_flops() == vit.flops_per_image(model, training=False)
    assert vit.flops_per_image(model) == 3 * counter.get_total_flops()


def test_bf16_autocast_forward_backward():
    torch.manual_seed(0)
    model = vit.ViT("mu/4", num_classes=10, img_size=16, head_zeroinit=False)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), ref, atol=0.05, rtol=0.05)
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_deterministic_given_seed():
    def build(seed):
        torch.manual_seed(seed)
        return vit.ViT("mu/4", num_classes=10, img_size=16, head_zeroinit=False, posemb="learn")
    a, b, c = build(3), build(3), build(4)
    for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(p, q), name
        assert torch.equal(p, r) == bool(torch.all(p == p.flatten()[0])), name  # only constants agree
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(a(x), b(x))


def test_compiles_without_graph_breaks():
    model = vit.ViT("mu/4", num_classes=10, img_size=16, pool_type="tok", head_zeroinit=False)
    x = torch.rand(2, 3, 16, 16)
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # dynamo trace only: fast
    torch.testing.assert_close(compiled(x), model(x))


def test_patch_matmul_is_the_patch_conv():
    """The default patch embedding (one matmul over flattened patches) computes the Conv2d's
    function with its weights: equal in float64 to rounding, tokens in the same order."""
    torch.manual_seed(0)
    model = vit.ViT("mu/8", img_size=(32, 48)).double()
    x = torch.randn(3, 3, 32, 48, dtype=torch.float64)
    assert model.patch_matmul
    fast = model.embed_patches(x)
    model.patch_matmul = False
    conv = model.embed_patches(x)
    assert fast.shape == (3, 4 * 6, 32)
    torch.testing.assert_close(fast, conv, rtol=1e-12, atol=1e-12)
