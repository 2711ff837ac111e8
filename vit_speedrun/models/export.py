"""A trained ViT out of this repo: as a .safetensors file that names its own layout, and as
timm's `VisionTransformer`, so that it runs where timm runs.

Both libraries are optional: each is imported only by the function that needs it, and a
missing one raises ExportError saying what to install. Files are written under a temporary
name and renamed when complete, so that a failed export leaves nothing that looks finished.

timm's VisionTransformer holds big_vision's ViT exactly: no class token and global_pool
'avg' (or the class token, global_pool 'token' and no_embed_class, since big_vision adds
the posemb before prepending the token), fc_norm off so that the final LayerNorm comes
before the pooling, tanh-approximate GELU, LayerNorm eps 1e-6, q/k/v fused in the order
of our `attn.qkv`. Two things timm has no setting for are carried as modules: the fixed
sin-cos table is copied into its `pos_embed` and frozen, and the tanh pre-logits layer
becomes the head `Sequential(Linear, Tanh, Linear)` (load_timm rebuilds it).
"""
import json
import os
import shutil
from pathlib import Path

import torch

from vit_speedrun.models import vit

TIMM_SETTINGS = "vit_speedrun.json"   # the timm folder's record of how to rebuild the head


class ExportError(ValueError):
    """An export or a load that cannot be done; the message says why and what to do."""


def _require(module, purpose, install):
    """Import an optional module, or say what to install."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(f"{purpose} needs {module}, which is not installed ({e}): "
                          f"pip install {install}") from None
    except RuntimeError as e:   # torchvision beside a torch it was not built for
        if "torchvision::" not in str(e):
            raise
        raise ExportError(f"{purpose} needs timm, whose torchvision does not load beside this "
                          f"torch {torch.__version__} ({e}): install the torchvision built "
                          f"for it (pytorch.org's install matrix), then timm") from None


def model_settings(model):
    """What rebuilds `model` with vit.ViT(**settings)."""
    return {"variant": model.variant, "num_classes": model.num_classes,
            "pool_type": model.pool_type, "posemb": model.posemb,
            "rep_size": model.rep_size or False, "img_size": list(model.img_size)}


def _atomic(path, write):
    """write(tmp) then rename tmp to path; tmp removed on every way out."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()
    return path


def save_safetensors(model, path, classes=()):
    """Our state dict as safetensors, with the settings that rebuild the model and its class
    list in the file's metadata (load_safetensors reads both back)."""
    st = _require("safetensors.torch", "a .safetensors export", "safetensors")
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"vit_speedrun": json.dumps(model_settings(model)),
            "classes": json.dumps(list(classes))}
    return _atomic(path, lambda tmp: st.save_file(state, str(tmp), metadata=meta))


def load_safetensors(path):
    """(model, classes) from a save_safetensors file."""
    st = _require("safetensors", "reading a .safetensors export", "safetensors")
    try:
        with st.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:   # safetensors' own error types vary between its versions
        raise ExportError(f"{path}: not a readable .safetensors file ({type(e).__name__}: "
                          f"{str(e)[:120]})") from None
    if "vit_speedrun" not in meta:
        raise ExportError(f"{path}: a .safetensors file without this repo's settings in its "
                          f"metadata; only export_vit.py's files can be loaded as a ViT")
    settings = json.loads(meta["vit_speedrun"])
    model = vit.ViT(**settings)
    model.load_state_dict(state)
    return model, json.loads(meta.get("classes", "[]"))


def timm_args(model):
    """timm VisionTransformer keyword arguments that give `model`'s function."""
    tok = model.pool_type == "tok"
    return dict(img_size=list(model.img_size), patch_size=model.patch_size,
                embed_dim=model.width, depth=model.depth,
                num_heads=model.blocks[0].attn.num_heads, mlp_ratio=model.mlp_dim / model.width,
                qkv_bias=True, class_token=tok, global_pool="token" if tok else "avg",
                no_embed_class=tok, fc_norm=False, act_layer="gelu_tanh", pos_embed="learn",
                num_classes=0 if model.rep_size else model.num_classes)


def _timm_head(rep_size, width, num_classes):
    """big_vision's pre-logits + head as one module timm's forward_head calls."""
    return torch.nn.Sequential(torch.nn.Linear(width, rep_size), torch.nn.Tanh(),
                               torch.nn.Linear(rep_size, num_classes))


def _timm_state(model):
    """Our weights under timm's names (timm_args says which layout they fill)."""
    sd = {"patch_embed.proj.weight": model.embedding.weight,
          "patch_embed.proj.bias": model.embedding.bias,
          "pos_embed": model.pos_embedding, "norm.weight": model.norm.weight,
          "norm.bias": model.norm.bias}
    if model.cls is not None:
        sd["cls_token"] = model.cls
    for i, b in enumerate(model.blocks):
        for ours, theirs in (("ln1", "norm1"), ("ln2", "norm2"), ("attn.qkv", "attn.qkv"),
                             ("attn.out", "attn.proj"), ("mlp.fc1", "mlp.fc1"),
                             ("mlp.fc2", "mlp.fc2")):
            m = b.get_submodule(ours)
            sd[f"blocks.{i}.{theirs}.weight"], sd[f"blocks.{i}.{theirs}.bias"] = m.weight, m.bias
    if model.rep_size:
        sd.update({"head.0.weight": model.pre_logits.weight, "head.0.bias": model.pre_logits.bias,
                   "head.2.weight": model.head.weight, "head.2.bias": model.head.bias})
    else:
        sd.update({"head.weight": model.head.weight, "head.bias": model.head.bias})
    return {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}


def _timm_model(args, rep_size, num_classes, posemb):
    """timm's VisionTransformer of args, with big_vision's pre-logits head when rep_size,
    and its pos_embed frozen when it holds the fixed sin-cos table."""
    timm_vit = _require("timm.models.vision_transformer", "a timm export", "timm")
    m = timm_vit.VisionTransformer(**args)
    if rep_size:
        m.head = _timm_head(rep_size, args["embed_dim"], num_classes)
    if posemb == "sincos2d":
        m.pos_embed.requires_grad_(False)
    return m


def to_timm(model):
    """A timm VisionTransformer computing what `model` computes (float32, eval mode)."""
    if not model.num_classes:
        raise ExportError("to_timm: the model has no head (num_classes 0)")
    m = _timm_model(timm_args(model), model.rep_size, model.num_classes, model.posemb)
    m.load_state_dict(_timm_state(model))
    return m.eval()


def save_timm(model, folder, classes=()):
    """A folder timm users know: model.safetensors under timm's names and config.json (timm's
    hub format: architecture, model_args, pretrained_cfg with the preprocessing and class
    names), plus vit_speedrun.json, which load_timm reads to rebuild the tanh pre-logits head.
    A model without pre-logits loads in timm alone: timm.create_model('local-dir:FOLDER')."""
    st = _require("safetensors.torch", "a timm export", "safetensors")
    _require("timm", "a timm export", "timm")
    args = timm_args(model)
    # architecture: a name timm has registered (timm requires one); model_args set every
    # dimension, whatever the variant. num_classes 0 there when the head is the Sequential.
    config = {"architecture": "vit_small_patch16_224",
              "num_classes": model.num_classes, "model_args": args,
              "pretrained_cfg": {"input_size": [3, *model.img_size], "crop_pct": 224 / 256,
                                 "crop_mode": "center", "interpolation": "bilinear",
                                 "mean": [0.5] * 3, "std": [0.5] * 3,
                                 "num_classes": model.num_classes,
                                 "label_names": list(classes) or None}}

    def write(tmp):
        tmp.mkdir()
        st.save_file(_timm_state(model), str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / TIMM_SETTINGS).write_text(json.dumps(
            {"pre_logits": model.rep_size, "posemb": model.posemb,
             "vit_speedrun": model_settings(model), "classes": list(classes)}, indent=2))
    return _atomic(folder, write)


def load_timm(folder):
    """(timm model, classes) from a save_timm folder, its pre-logits head rebuilt."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
        ours = json.loads((folder / TIMM_SETTINGS).read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{folder}: not an export_vit.py --to timm folder ({e})") from None
    st = _require("safetensors.torch", "loading a timm export", "safetensors")
    m = _timm_model(config["model_args"], ours["pre_logits"], config["num_classes"],
                    ours["posemb"])
    m.load_state_dict(st.load_file(str(folder / "model.safetensors")))
    return m.eval(), ours["classes"]
