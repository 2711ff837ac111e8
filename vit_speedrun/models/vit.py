"""The plain ViT of "Better plain ViT baselines for ImageNet-1k", in PyTorch.

A port of google-research/big_vision `models/vit.py` as `configs/vit_s16_i1k.py` runs it
(ViT-S/16, 2-D sin-cos position embedding, global average pooling, tanh pre-logits,
zero-initialised head), with big_vision's constructor names and its initialisers, so that
a PyTorch run starts from the same distribution of weights as the reference. The paper's
model ablations (learned posemb, [cls] token, linear head) are constructor switches.
See RECIPE.md, section "Model".

Layout differences from big_vision, none of them semantic: NCHW input; q, k and v live in
one fused Linear (one matmul instead of three) but are initialised as three separate
384x384 matrices, as flax's DenseGeneral does for each of them.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# name -> (width, depth, mlp_dim, num_heads). big_vision's decode_variant table (Table 2 of
# arXiv 2106.04560), plus two tiny variants of ours that are not in big_vision:
#   "mu"   : 32 wide, 2 blocks, 2 heads: unit tests on CPU in milliseconds.
#   "pico" : 64 wide, 4 blocks, 4 heads: a model that learns 8x8 digits on a laptop CPU.
VARIANTS = {
    "mu": (32, 2, 64, 2), "pico": (64, 4, 256, 4),
    "Ti": (192, 12, 768, 3), "S": (384, 12, 1536, 6), "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12), "L": (1024, 24, 4096, 16), "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16), "g": (1408, 40, 6144, 16), "G": (1664, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}


def decode_variant(variant):
    """'S/16' -> dict(width, depth, mlp_dim, num_heads, patch_size); no '/<patch>' means 16."""
    name, _, patch = variant.partition("/")
    if name not in VARIANTS or (patch and not patch.isdigit()) or patch == "0":
        raise ValueError(f"ViT: unknown ViT variant {variant!r}: use '<name>/<patch>' with "
                         f"<name> one of {sorted(VARIANTS)} and <patch> a positive int, e.g. 'S/16'")
    width, depth, mlp_dim, num_heads = VARIANTS[name]
    return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads,
                patch_size=int(patch) if patch else 16)


def sincos_2d(h, w, width, temperature=10000.):
    """The fixed 2-D sin-cos position embedding [h*w, width] (big_vision posemb_sincos_2d).

    Token t = row * w + col (row-major). width/4 frequencies omega_k = temperature^(-k/(width/4-1));
    channels are [sin(col*omega), cos(col*omega), sin(row*omega), cos(row*omega)]. Computed in
    float64 and rounded once to float32.
    """
    if width % 4:
        raise ValueError(f"ViT: sincos2d posemb needs a width divisible by 4, got {width}")
    n = width // 4
    omega = 1.0 / temperature ** (torch.arange(n, dtype=torch.float64) / max(n - 1, 1))
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                          torch.arange(w, dtype=torch.float64), indexing="ij")
    x = x.flatten()[:, None] * omega[None]
    y = y.flatten()[:, None] * omega[None]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()


def lecun_normal_(weight):
    """JAX's lecun_normal: truncated normal at +-2 std with fan-in variance 1/fan_in.

    JAX divides the std by .87962566103423978 (the std of a standard normal truncated at +-2)
    so that the truncated samples have exactly variance 1/fan_in.
    """
    fan_in = weight[0].numel()  # Linear [out, in] -> in; Conv2d [out, in, kh, kw] -> in*kh*kw
    std = math.sqrt(1.0 / fan_in) / .87962566103423978
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class Attention(nn.Module):
    """Multi-head self-attention; q, k, v fused in one Linear, flash/SDPA kernel."""

    def __init__(self, width, num_heads):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"ViT: width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def reset_parameters(self):
        d = self.out.in_features
        for i in range(3):  # q, k, v: Xavier on each one's own [width, width] shape
            nn.init.xavier_uniform_(self.qkv.weight[i * d:(i + 1) * d])
        nn.init.xavier_uniform_(self.out.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        b, n, d = x.shape
        # channel c of q (k, v) belongs to head c // head_dim, as in flax's DenseGeneral
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [b, heads, n, head_dim]
        y = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as flax
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Dense -> tanh-GELU -> Dense; Xavier kernels, biases N(0, 1e-6) (big_vision MlpBlock)."""

    def __init__(self, width, mlp_dim):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def reset_parameters(self):
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x)). No dropout."""

    def __init__(self, width, mlp_dim, num_heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, num_heads)
        self.ln2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, mlp_dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """big_vision's ViT. Input float NCHW in [-1, 1]; output logits [B, num_classes].

    variant: '<name>/<patch>' from VARIANTS, e.g. 'S/16', 'mu/4'.
    num_classes: head size; 0 or None -> no head, the model returns pre-logits features.
    pool_type: 'gap' (mean of all tokens) or 'tok' (a learned [cls] token, init zeros,
        prepended after the posemb is added, as big_vision does).
    posemb: 'sincos2d' (fixed buffer) or 'learn' (a parameter, init N(0, 1/width)).
    rep_size: True -> tanh pre-logits Dense of size width; an int -> of that size;
        False/0 -> none (the 'linear head' ablation).
    head_zeroinit: head kernel zeros (else LeCun-normal); head bias is zeros either way.
    img_size: int or (h, w); must be a multiple of the patch size.
    """

    def __init__(self, variant="S/16", num_classes=1000, pool_type="gap", posemb="sincos2d",
                 rep_size=True, head_zeroinit=True, img_size=224):
        super().__init__()
        cfg = decode_variant(variant)
        width, p = cfg["width"], cfg["patch_size"]
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if img_size[0] % p or img_size[1] % p:
            raise ValueError(f"ViT: img_size {img_size} is not a multiple of the patch size {p}")
        if pool_type not in ("gap", "tok"):
            raise ValueError(f"ViT: pool_type must be 'gap' or 'tok', got {pool_type!r}")
        if posemb not in ("sincos2d", "learn"):
            raise ValueError(f"ViT: posemb must be 'sincos2d' or 'learn', got {posemb!r}")
        self.variant, self.img_size = variant, img_size
        self.grid = (img_size[0] // p, img_size[1] // p)
        self.width, self.depth, self.mlp_dim, self.patch_size = width, cfg["depth"], cfg["mlp_dim"], p
        self.num_classes, self.pool_type, self.posemb = num_classes or 0, pool_type, posemb
        self.head_zeroinit = head_zeroinit
        self.rep_size = width if rep_size is True else int(rep_size or 0)

        self.embedding = nn.Conv2d(3, width, kernel_size=p, stride=p)
        # The stride-p conv computed as one matmul over flattened patches (same weights,
        # same function): cuDNN runs this conv as an implicit GEMM about 30x slower than
        # the matmul it is (README, "Speed"). False runs the Conv2d itself.
        self.patch_matmul = True
        n_tokens = self.grid[0] * self.grid[1]
        if posemb == "sincos2d":  # not in the state dict: it is a function of the shapes
            self.register_buffer("pos_embedding", sincos_2d(*self.grid, width)[None], persistent=False)
        else:
            self.pos_embedding = nn.Parameter(torch.empty(1, n_tokens, width))
        self.cls = nn.Parameter(torch.empty(1, 1, width)) if pool_type == "tok" else None
        self.blocks = nn.ModuleList(Block(width, cfg["mlp_dim"], cfg["num_heads"])
                                    for _ in range(cfg["depth"]))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.pre_logits = nn.Linear(width, self.rep_size) if self.rep_size else None
        self.head = nn.Linear(self.rep_size or width, self.num_classes) if self.num_classes else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """big_vision's initialisers, module by module (RECIPE.md, "Model")."""
        lecun_normal_(self.embedding.weight)
        nn.init.zeros_(self.embedding.bias)
        if self.posemb == "learn":
            nn.init.normal_(self.pos_embedding, std=1 / math.sqrt(self.width))
        if self.cls is not None:
            nn.init.zeros_(self.cls)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.reset_parameters()  # scale 1, bias 0
            elif isinstance(m, (Attention, Mlp)):
                m.reset_parameters()
        if self.pre_logits is not None:
            lecun_normal_(self.pre_logits.weight)
            nn.init.zeros_(self.pre_logits.bias)
        if self.head is not None:
            if self.head_zeroinit:
                nn.init.zeros_(self.head.weight)
            else:
                lecun_normal_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def embed_patches(self, x):
        conv = self.embedding
        if not self.patch_matmul:
            return conv(x).flatten(2).transpose(1, 2)
        return F.linear(_patches(x, self.patch_size), conv.weight.flatten(1), conv.bias)

    def forward(self, x):
        if x.shape[-2:] != self.img_size:
            raise ValueError(f"ViT: ViT built for {self.img_size} images got {tuple(x.shape[-2:])}")
        x = self.embed_patches(x)  # [B, h*w, width], tokens row-major
        x = x + self.pos_embedding
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        x = x[:, 0] if self.pool_type == "tok" else x.mean(dim=1)
        if self.pre_logits is not None:
            x = torch.tanh(self.pre_logits(x))
        return self.head(x) if self.head is not None else x


def _patches(x, p):
    """[B, C, H, W] -> [B, (H/p)*(W/p), C*p*p]: row-major patches, each flattened in the
    (channel, row, column) order of a Conv2d kernel."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def param_groups(model, weight_decay):
    """Two AdamW groups: decay on weight matrices and the patch-conv kernel, none elsewhere.

    This is big_vision's default mask '.*/kernel$': every Dense and Conv kernel (head and
    pre-logits included) decays; biases, LayerNorm scales, posemb and [cls] do not.
    """
    kernels = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if id(p) in kernels], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in kernels], "weight_decay": 0.0}]


def flops_per_image(model, img_size=None, training=True, **vit_kwargs):
    """Matmul FLOPs for one image, counted from shapes (2 FLOPs per multiply-add).

    Counts the patch embedding, q/k/v, attention scores and attention-times-values, the
    output projection, the MLP, pre-logits and head; not LayerNorm, GELU, softmax or adds
    (well under 1%). training=True is the usual 3x forward (forward + 2x for backward).
    `model` is a ViT, or a variant string (then img_size, default 224, and vit_kwargs are
    as for ViT). ViT-S/16 at 224: 9,148,348,416 forward, 27,445,045,248 training.
    """
    if isinstance(model, str):
        with torch.device("meta"):
            model = ViT(model, img_size=img_size or 224, **vit_kwargs)
    elif img_size is not None or vit_kwargs:
        raise ValueError("ViT: flops_per_image takes img_size/options only with a variant string")
    d, m, p = model.width, model.mlp_dim, model.patch_size
    n = model.grid[0] * model.grid[1]
    t = n + (model.pool_type == "tok")
    block = t * d * 3 * d + 2 * t * t * d + t * d * d + 2 * t * d * m
    macs = n * 3 * p * p * d + model.depth * block
    macs += d * model.rep_size + (model.rep_size or d) * model.num_classes
    return 2 * macs * (3 if training else 1)


def big_vision_params(path_or_arrays):
    """{name: numpy array} of a big_vision checkpoint (an .npz path such as the published
    vit_s16_i1k_90ep.npz, or a dict of arrays), names as big_vision flattens them
    ('Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel'), with or
    without the 'params/' prefix; a scanned model's stacked 'Transformer/encoderblock/...'
    is split into encoderblock_0, _1, ..."""
    import numpy as np
    if isinstance(path_or_arrays, dict):
        arrays = dict(path_or_arrays)
    else:
        with np.load(path_or_arrays, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    out = {}
    for name, value in arrays.items():
        name = name[len("params/"):] if name.startswith("params/") else name
        if name == "Transformer/pos_embedding":   # where checkpoints before 2022 kept it
            name = "pos_embedding"
        if name.startswith("Transformer/encoderblock/"):
            rest = name[len("Transformer/encoderblock/"):]
            for i, v in enumerate(np.asarray(value)):
                out[f"Transformer/encoderblock_{i}/{rest}"] = v
        else:
            out[name] = np.asarray(value)
    return out


def from_big_vision(path_or_arrays, variant="S/16", **model_kwargs):
    """A ViT holding a big_vision checkpoint's weights (big_vision_params names them). The
    layout follows the arrays (a 'cls' token: pool_type 'tok'; a 'pos_embedding': learned;
    'pre_logits' or not; the head's classes) unless model_kwargs say otherwise; img_size
    defaults to what a learned pos_embedding implies, else 224. Kernels are flax's
    [in, out] (conv: [kh, kw, in, out]; attention: [in, heads, head_dim] and
    [heads, head_dim, out]), transposed into PyTorch's [out, in]."""
    p = big_vision_params(path_or_arrays)
    cfg = decode_variant(variant)
    width, patch = cfg["width"], cfg["patch_size"]
    if "embedding/kernel" not in p:
        raise ValueError("from_big_vision: no 'embedding/kernel' among the arrays: not a "
                         "big_vision ViT checkpoint (names: " + ", ".join(sorted(p)[:5]) + ")")
    if p["embedding/kernel"].shape != (patch, patch, 3, width):
        raise ValueError(f"from_big_vision: embedding/kernel is {p['embedding/kernel'].shape}, "
                         f"variant {variant} needs {(patch, patch, 3, width)}")
    kw = dict(pool_type="tok" if "cls" in p else "gap",
              posemb="learn" if "pos_embedding" in p else "sincos2d",
              rep_size=p["pre_logits/kernel"].shape[1] if "pre_logits/kernel" in p else False,
              num_classes=p["head/kernel"].shape[1] if "head/kernel" in p else 0)
    if "pos_embedding" in p:
        side = math.isqrt(p["pos_embedding"].shape[1])
        kw["img_size"] = side * patch
    kw.update(model_kwargs)
    model = ViT(variant, **kw)
    try:
        sd = _state_dict_of(p, model, width)
    except KeyError as e:
        raise ValueError(f"from_big_vision: the checkpoint has no array {e} that a ViT "
                         f"{variant} with {kw} needs") from None
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"from_big_vision: the checkpoint does not fill the model "
                         f"(missing {missing}, unexpected {unexpected})")
    return model


def _state_dict_of(p, model, width):
    """Our state dict from big_vision's arrays (from_big_vision says how they map)."""
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)   # noqa: E731
    sd = {"embedding.weight": t(p["embedding/kernel"].transpose(3, 2, 0, 1)),
          "embedding.bias": t(p["embedding/bias"]),
          "norm.weight": t(p["Transformer/encoder_norm/scale"]),
          "norm.bias": t(p["Transformer/encoder_norm/bias"])}
    if "pos_embedding" in p:
        sd["pos_embedding"] = t(p["pos_embedding"])
    if "cls" in p:
        sd["cls"] = t(p["cls"])
    for i in range(model.depth):
        b, o = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        att = b + "MultiHeadDotProductAttention_0/"
        for ln, name in (("LayerNorm_0", "ln1"), ("LayerNorm_1", "ln2")):
            sd[o + name + ".weight"] = t(p[b + ln + "/scale"])
            sd[o + name + ".bias"] = t(p[b + ln + "/bias"])
        sd[o + "attn.qkv.weight"] = torch.cat([t(p[att + k + "/kernel"].reshape(width, width).T)
                                               for k in ("query", "key", "value")])
        sd[o + "attn.qkv.bias"] = torch.cat([t(p[att + k + "/bias"].reshape(width))
                                             for k in ("query", "key", "value")])
        sd[o + "attn.out.weight"] = t(p[att + "out/kernel"].reshape(width, width).T)
        sd[o + "attn.out.bias"] = t(p[att + "out/bias"])
        for k, name in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            sd[o + f"mlp.{name}.weight"] = t(p[b + f"MlpBlock_0/{k}/kernel"].T)
            sd[o + f"mlp.{name}.bias"] = t(p[b + f"MlpBlock_0/{k}/bias"])
    for name in ("pre_logits", "head"):
        if getattr(model, name) is not None:
            sd[name + ".weight"] = t(p[name + "/kernel"].T)
            sd[name + ".bias"] = t(p[name + "/bias"])
    return sd


if __name__ == "__main__":  # python -m vit_speedrun.models.vit S/16 [img_size]
    import sys
    variant = sys.argv[1] if len(sys.argv) > 1 else "S/16"
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 224
    with torch.device("meta"):
        vit = ViT(variant, img_size=size)
    print(f"ViT-{variant} at {size}px: {sum(q.numel() for q in vit.parameters()):,} parameters, "
          f"{flops_per_image(vit, training=False) / 1e9:.3f} GFLOP forward, "
          f"{flops_per_image(vit) / 1e9:.3f} GFLOP per training image")
