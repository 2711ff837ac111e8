"""vit.from_big_vision: a big_vision checkpoint's arrays, named and laid out as big_vision's
models/vit.py makes them (flax kernels [in, out], attention [in, heads, head_dim] and
[heads, head_dim, out], 'params/' prefixes, scanned blocks), give our ViT the function a
numpy re-implementation of big_vision's forward computes from the same arrays."""
import numpy as np
import pytest
import torch

from vit_speedrun.models import vit


def big_vision_arrays(variant, num_classes=7, img=32, rep=True, tok=False, learn=False,
                      seed=0):
    """Random arrays with big_vision's names and shapes for `variant`."""
    cfg = vit.decode_variant(variant)
    d, m, h, p = cfg["width"], cfg["mlp_dim"], cfg["num_heads"], cfg["patch_size"]
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)   # noqa: E731
    a = {"embedding/kernel": r(p, p, 3, d), "embedding/bias": r(d),
         "Transformer/encoder_norm/scale": 1 + r(d), "Transformer/encoder_norm/bias": r(d),
         "head/kernel": r(d if rep else d, num_classes), "head/bias": r(num_classes)}
    if rep:
        a["pre_logits/kernel"], a["pre_logits/bias"] = r(d, d), r(d)
    if tok:
        a["cls"] = r(1, 1, d)
    if learn:
        a["pos_embedding"] = r(1, (img // p) ** 2, d)
    for i in range(cfg["depth"]):
        b = f"Transformer/encoderblock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_1"):
            a[b + ln + "/scale"], a[b + ln + "/bias"] = 1 + r(d), r(d)
        for k in ("query", "key", "value"):
            a[b + f"MultiHeadDotProductAttention_0/{k}/kernel"] = r(d, h, d // h)
            a[b + f"MultiHeadDotProductAttention_0/{k}/bias"] = r(h, d // h)
        a[b + "MultiHeadDotProductAttention_0/out/kernel"] = r(h, d // h, d)
        a[b + "MultiHeadDotProductAttention_0/out/bias"] = r(d)
        a[b + "MlpBlock_0/Dense_0/kernel"], a[b + "MlpBlock_0/Dense_0/bias"] = r(d, m), r(m)
        a[b + "MlpBlock_0/Dense_1/kernel"], a[b + "MlpBlock_0/Dense_1/bias"] = r(m, d), r(d)
    return a


def big_vision_forward(a, image, variant):
    """big_vision's _Model.__call__ in float64 numpy on NHWC images in [-1, 1]."""
    cfg = vit.decode_variant(variant)
    p, depth = cfg["patch_size"], cfg["depth"]
    n, hh, ww, _ = image.shape
    x = image.reshape(n, hh // p, p, ww // p, p, 3).transpose(0, 1, 3, 2, 4, 5)
    x = np.einsum("nijabc,abcd->nijd", x, a["embedding/kernel"]) + a["embedding/bias"]
    gh, gw = x.shape[1:3]
    x = x.reshape(n, gh * gw, -1)
    x = x + (a["pos_embedding"] if "pos_embedding" in a else
             vit.sincos_2d(gh, gw, x.shape[-1]).double().numpy()[None])
    if "cls" in a:
        x = np.concatenate([np.tile(a["cls"], (n, 1, 1)), x], axis=1)

    def ln(x, pre):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * a[pre + "/scale"] + a[pre + "/bias"]

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        att = b + "MultiHeadDotProductAttention_0/"
        y = ln(x, b + "LayerNorm_0")
        q, k, v = (np.einsum("nld,dhk->nlhk", y, a[att + f"{t}/kernel"]) + a[att + f"{t}/bias"]
                   for t in ("query", "key", "value"))
        w = np.einsum("nqhk,nlhk->nhql", q / np.sqrt(q.shape[-1]), k)
        w = np.exp(w - w.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        o = np.einsum("nhql,nlhk->nqhk", w, v)
        x = x + np.einsum("nqhk,hkd->nqd", o, a[att + "out/kernel"]) + a[att + "out/bias"]
        y = ln(x, b + "LayerNorm_1")
        y = gelu(y @ a[b + "MlpBlock_0/Dense_0/kernel"] + a[b + "MlpBlock_0/Dense_0/bias"])
        x = x + y @ a[b + "MlpBlock_0/Dense_1/kernel"] + a[b + "MlpBlock_0/Dense_1/bias"]
    x = ln(x, "Transformer/encoder_norm")
    x = x[:, 0] if "cls" in a else x.mean(1)
    if "pre_logits/kernel" in a:
        x = np.tanh(x @ a["pre_logits/kernel"] + a["pre_logits/bias"])
    return x @ a["head/kernel"] + a["head/bias"]


@pytest.mark.parametrize("layout", ["gap-sincos", "tok-learn", "linear-head", "prefixed",
                                    "scanned"])
def test_from_big_vision_computes_big_visions_function(layout, tmp_path):
    variant = "mu/8"
    a = big_vision_arrays(variant, tok=layout == "tok-learn", learn=layout == "tok-learn",
                          rep=layout != "linear-head")
    given = a
    if layout == "prefixed":   # an .npz as the published checkpoints: 'params/...' names
        np.savez(tmp_path / "ckpt.npz", **{f"params/{k}": v for k, v in a.items()})
        given = tmp_path / "ckpt.npz"
    elif layout == "scanned":  # scan=True stacks the blocks on a leading axis
        given = {k: v for k, v in a.items() if "encoderblock_" not in k}
        for k in [k for k in a if k.startswith("Transformer/encoderblock_0/")]:
            rest = k[len("Transformer/encoderblock_0/"):]
            given["Transformer/encoderblock/" + rest] = np.stack(
                [a[f"Transformer/encoderblock_{i}/{rest}"] for i in range(2)])
    model = vit.from_big_vision(given, variant, img_size=32).double().eval()
    assert model.pool_type == ("tok" if layout == "tok-learn" else "gap")
    assert model.rep_size == (0 if layout == "linear-head" else 32) and model.num_classes == 7
    image = np.random.default_rng(1).uniform(-1, 1, (3, 32, 32, 3))
    with torch.no_grad():
        ours = model(torch.as_tensor(image).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(ours, big_vision_forward(a, image, variant), rtol=1e-9,
                               atol=1e-9)


def test_from_big_vision_names_what_does_not_fit():
    a = big_vision_arrays("mu/8")
    with pytest.raises(ValueError, match="variant S/16 needs"):
        vit.from_big_vision(a, "S/16")
    with pytest.raises(ValueError, match="not a big_vision ViT checkpoint"):
        vit.from_big_vision({"foo": np.zeros(3)}, "mu/8")
    del a["Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"]
    with pytest.raises(ValueError, match="no array 'Transformer/encoderblock_1/MlpBlock_0"):
        vit.from_big_vision(a, "mu/8")
