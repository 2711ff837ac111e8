"""vit_speedrun/pp/randaug_ops.py against big_vision's own outputs (tests/data) and the recipe.

Every golden case is checked pixel by pixel. The acceptance bar is "point ops exact,
the others >= 99.9% exact and all within 1 level"; the kernels reach 100% on every op,
so the tests hold them to that and print the per-op table (`pytest -s` shows it; the
same table comes from `python vit_speedrun/pp/randaug_ops.py --golden`).
"""
import json

import numpy as np
import pytest
from numba import njit

from vit_speedrun.pp import randaug_ops as A
from conftest import GOLDEN

POINT_OPS = ("Invert", "Posterize", "Solarize", "SolarizeAdd", "AutoContrast", "Equalize")
OTHER_OPS = tuple(n for n in A.OP_NAMES if n not in POINT_OPS and n != "Cutout")


@pytest.fixture(scope="module")
def golden():
    """(cases, images, outputs) of the golden file, loaded once."""
    if not GOLDEN.exists():
        pytest.fail(f"golden file {GOLDEN} is missing: it ships in tests/data")
    z = np.load(GOLDEN)
    index = json.loads(bytes(z["index_json"]).decode())
    images = {n: z["img_" + n] for n in index["images"]}
    outputs = {c["output"]: z[c["output"]] for c in index["cases"]}
    return index["cases"], images, outputs


@pytest.fixture(scope="module")
def per_op(golden):
    """{op: [(case, ours, reference)]} for every non-Cutout case, computed once."""
    cases, images, outputs = golden
    out = {}
    for c in cases:
        if c["op"] != "Cutout":
            ours = A.apply_op(images[c["image"]], c["op"], *c["args"])
            out.setdefault(c["op"], []).append((c, ours, outputs[c["output"]]))
    return out


def test_golden_covers_every_op(golden):
    assert {c["op"] for c in golden[0]} == set(A.OP_NAMES)


@pytest.mark.parametrize("op", POINT_OPS + OTHER_OPS)
def test_golden_op_matches_every_pixel(per_op, op):
    for case, ours, ref in per_op[op]:
        assert ours.shape == ref.shape and ours.dtype == np.uint8
        diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
        where = np.argwhere(diff)[:5].tolist()
        assert diff.max() == 0, (f"{case}: {int((diff > 0).sum())} of {diff.size} values "
                                 f"differ (max {diff.max()}), first at {where}")


def test_golden_table(per_op, capsys):
    """The per-op table of exact / within-1 fractions, printed for the README."""
    rows = []
    for op in A.OP_NAMES:
        if op in per_op:
            d = np.concatenate([np.abs(o.astype(np.int16) - r).ravel()
                                for _, o, r in per_op[op]])
            rows.append((op, d.size, (d == 0).mean(), (d <= 1).mean()))
    with capsys.disabled():
        print("\n| op | values | exact | within 1 |")
        for op, n, e, w1 in rows:
            print(f"| {op} | {n} | {e:.4%} | {w1:.4%} |")
    for op, n, e, w1 in rows:
        assert w1 == 1.0 and e >= (1.0 if op in POINT_OPS else 0.999), op


def _cutout_box(before, after):
    """Bounding box (y0, y1, x0, x1) of the pixels that changed, or None."""
    changed = np.argwhere((before != after).any(-1))
    if changed.size == 0:
        return None
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0) + 1
    return int(y0), int(y1), int(x0), int(x1)


def _check_cutout(before, after, pad):
    """A 2*pad square clipped at the borders, filled with 128, nothing else changed."""
    h, w = before.shape[:2]
    box = _cutout_box(before, after)
    assert box is not None
    y0, y1, x0, x1 = box
    for lo, hi, size in ((y0, y1, h), (x0, x1, w)):
        assert hi - lo <= 2 * pad
        assert hi - lo == 2 * pad or lo == 0 or hi == size, (box, pad)
    assert (after[y0:y1, x0:x1] == 128).all()
    rest = np.ones((h, w), bool)
    rest[y0:y1, x0:x1] = False
    assert (after[rest] == before[rest]).all()
    return box


def test_golden_cutout_and_ours_at_the_same_centre(golden):
    """The reference's square (random centre) checked for size and fill; then ours at
    the centre that square implies reproduces the reference's output exactly."""
    cases, images, outputs = golden
    cutouts = [c for c in cases if c["op"] == "Cutout"]
    assert cutouts
    for c in cutouts:
        img, ref, pad = images[c["image"]], outputs[c["output"]], int(c["args"][0])
        y0, y1, x0, x1 = _check_cutout(img, ref, pad)
        cy = y0 + pad if y0 > 0 or y1 - y0 == 2 * pad else y1 - pad
        cx = x0 + pad if x0 > 0 or x1 - x0 == 2 * pad else x1 - pad
        np.testing.assert_array_equal(A.apply_op(img, "Cutout", pad, center=(cy, cx)), ref)


def test_cutout_random_centre_and_corners(photos):
    img = np.ascontiguousarray(photos["astronaut"][:200, :150])
    rng = np.random.default_rng(0)
    for _ in range(20):
        _check_cutout(img, A.apply_op(img, "Cutout", 40, rng=rng), 40)
    for centre in ((0, 0), (199, 149), (0, 149), (100, 75)):
        out = A.apply_op(img, "Cutout", 40, centre)  # centre as a second positional arg
        _check_cutout(img, out, 40)
        assert out[centre].tolist() == [128, 128, 128]
    assert (A.apply_op(img, "Cutout", 0, center=(5, 5)) == img).all()


# ------------------------------------------------------------------------- level_to_arg
EXPECTED = {  # magnitude -> op -> argument (positive sign, reference quirks)
    10: dict(Rotate=30.0, ShearX=0.3, ShearY=0.3, TranslateX=100.0, TranslateY=100.0,
             Posterize=4.0, Solarize=256.0, SolarizeAdd=110.0, Color=1.9000000000000001,
             Contrast=1.9000000000000001, Brightness=1.9000000000000001,
             Sharpness=1.9000000000000001, Cutout=40.0),
    5: dict(Rotate=15.0, ShearX=0.15, ShearY=0.15, TranslateX=50.0, TranslateY=50.0,
            Posterize=2.0, Solarize=128.0, SolarizeAdd=55.0, Color=1.0, Contrast=1.0,
            Brightness=1.0, Sharpness=1.0, Cutout=20.0),
    0: dict(Rotate=0.0, ShearX=0.0, ShearY=0.0, TranslateX=0.0, TranslateY=0.0,
            Posterize=0.0, Solarize=0.0, SolarizeAdd=0.0, Color=0.1, Contrast=0.1,
            Brightness=0.1, Sharpness=0.1, Cutout=0.0),
}
SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


@pytest.mark.parametrize("magnitude", [0, 5, 10])
@pytest.mark.parametrize("negate", [False, True])
@pytest.mark.parametrize("fixed", [False, True])
def test_level_to_arg(magnitude, negate, fixed):
    for i, op in enumerate(A.OP_NAMES):
        want = EXPECTED[magnitude].get(op, 0.0)
        if negate and op in SIGNED:
            want = -want
        if fixed and op == "Solarize":
            want = min(want, 255.0)
        got = A.level_to_arg(i, float(magnitude), negate, fixed)
        assert got == want, (op, magnitude, negate, fixed, got, want)


def test_level_to_arg_matches_the_golden_arguments(golden):
    """The golden cases at magnitudes 10 and 5 use exactly the mapped arguments."""
    args = {(c["op"], abs(c["args"][0])) for c in golden[0] if c["args"]}
    for m in (10, 5):
        for op, val in EXPECTED[m].items():
            assert (op, val) in args, (op, val)


def test_numba_callers_use_the_contract_signatures():
    """level_to_arg and apply_op_inplace from other numba code, on the images of an NHWC
    batch as the FFCV operation passes them: the contract's 6-argument call and the
    7-argument one with `fixed`."""
    @njit
    def run(batch, scratch, op, magnitude):
        arg = A.level_to_arg(op, magnitude, True, False)
        A.apply_op_inplace(batch[0], scratch[0], op, arg, 10, 10)
        A.apply_op_inplace(batch[1], scratch[1], op, arg, np.int64(10), np.int64(10), True)
        return arg

    batch = np.full((2, 32, 48, 3), 200, np.uint8)
    scratch = np.empty_like(batch)
    assert run(batch, scratch, A.OP_INDEX["Rotate"], 10.0) == -30.0
    want = A.apply_op(np.full((32, 48, 3), 200, np.uint8), "Rotate", -30.0)
    assert (batch[0] == want).all() and (batch[1] == want).all()
    assert (want == 128).any() and (want == 200).any()


# ------------------------------------------------------------------------- quirks, fixed
def test_solarize_quirk_and_fixed(photos):
    img = np.ascontiguousarray(photos["coffee"][:64, :64])
    img[0, 0] = 255
    assert (A.apply_op(img, "Solarize", 256) == 255 - img).all()  # 256 wraps to 0
    t = A.level_to_arg(A.OP_INDEX["Solarize"], 10.0, False, True)
    out = A.apply_op(img, "Solarize", t)
    assert (out == np.where(img == 255, 0, img)).all() and out[0, 0].tolist() == [0, 0, 0]


def _gray_np(img):
    """TF's rgb_to_grayscale in numpy float32, as an independent check of the kernels."""
    x = img.astype(np.float32) * np.float32(1 / 255)
    w = np.array([0.2989, 0.5870, 0.1140], np.float32)
    g = (x[..., 0] * w[0] + x[..., 1] * w[1]) + x[..., 2] * w[2]
    return (g * np.float32(255.5)).astype(np.uint8)


def _blend_np(deg, img, factor):
    d, x = np.float32(deg) if np.isscalar(deg) else deg.astype(np.float32), img.astype(np.float32)
    return np.clip(d + np.float32(factor) * (x - d), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(224, 224), (160, 240), (300, 300), (10, 20)])
def test_contrast_gray_is_pixel_count_over_256(shape):
    img = np.random.default_rng(1).integers(0, 256, shape + (3,), dtype=np.uint8)
    gray = min(shape[0] * shape[1] // 256, 255)  # 196 at 224x224, clipped at 255
    assert (A.apply_op(img, "Contrast", 0.0) == gray).all()
    np.testing.assert_array_equal(A.apply_op(img, "Contrast", 1.9), _blend_np(gray, img, 1.9))


def test_contrast_fixed_uses_the_true_mean(photos):
    img = np.ascontiguousarray(photos["chelsea"][:120, :130])
    g = _gray_np(img)
    mean = np.uint8(np.float32(int(g.astype(np.int64).sum())) / np.float32(g.size))
    assert abs(int(mean) - g.mean()) < 1
    assert (A.apply_op(img, "Contrast", 0.0, fixed=True) == mean).all()
    np.testing.assert_array_equal(A.apply_op(img, "Contrast", 1.9, fixed=True),
                                  _blend_np(mean, img, 1.9))
    assert not (A.apply_op(img, "Contrast", 1.9, fixed=True)
                == A.apply_op(img, "Contrast", 1.9)).all()


def test_color_and_posterize_edge_arguments(photos):
    img = np.ascontiguousarray(photos["astronaut"][:50, :60])
    g = _gray_np(img)[..., None].repeat(3, -1)
    np.testing.assert_array_equal(A.apply_op(img, "Color", 0.0), g)
    np.testing.assert_array_equal(A.apply_op(img, "Color", 0.7), _blend_np(g, img, 0.7))
    # TF clamps shifts to [0, 7]: 0 bits (magnitude 0) keeps the top bit.
    assert (A.apply_op(img, "Posterize", 0) == img & 0x80).all()
    assert (A.apply_op(img, "Posterize", 8) == img).all()


def _warp_np(img, t):
    """Independent numpy version of the reference's nearest-neighbour transform: float32
    products and sums in TF's order, rounding half away from zero (in float64, exact)."""
    f = np.float32
    h, w = img.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    xi = (f(t[0]) * x + f(t[1]) * y) + f(t[2])
    yi = (f(t[3]) * x + f(t[4]) * y) + f(t[5])
    xr = (np.sign(xi) * np.floor(np.abs(xi.astype(np.float64)) + 0.5)).astype(int)
    yr = (np.sign(yi) * np.floor(np.abs(yi.astype(np.float64)) + 0.5)).astype(int)
    ok = (xr >= 0) & (xr < w) & (yr >= 0) & (yr < h)
    out = np.full_like(img, 128)
    out[ok] = img[yr[ok], xr[ok]]
    return out


@pytest.mark.parametrize("op, arg", [
    ("TranslateX", 33.3), ("TranslateX", -0.5), ("TranslateY", 66.66), ("TranslateY", -7.5),
    ("ShearX", -0.17), ("ShearX", 0.29), ("ShearY", 0.23), ("ShearY", -0.3),
    ("Rotate", 27.0), ("Rotate", -3.0), ("Rotate", 180.0)])
def test_geometric_ops_off_the_golden_grid(photos, op, arg):
    """Arguments the golden file does not hold (fractional shifts, other angles) on an
    odd-sized image, against the numpy transform above."""
    img = np.ascontiguousarray(photos["coffee"][:101, :77])
    h, w = img.shape[:2]
    f = np.float32
    if op == "Rotate":
        a = f(arg) * f(np.pi / 180)
        c, s = f(np.cos(np.float64(a))), f(np.sin(np.float64(a)))
        ox = ((f(w) - 1) - (c * (f(w) - 1) - s * (f(h) - 1))) / f(2)
        oy = ((f(h) - 1) - (s * (f(w) - 1) + c * (f(h) - 1))) / f(2)
        t = (c, -s, ox, s, c, oy)
    else:
        t = {"TranslateX": (1, 0, arg, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, arg),
             "ShearX": (1, arg, 0, 0, 1, 0), "ShearY": (1, 0, 0, arg, 1, 0)}[op]
    np.testing.assert_array_equal(A.apply_op(img, op, arg), _warp_np(img, t))


def test_equalize_and_autocontrast_against_numpy(photos):
    """PIL's rules written out in numpy, on an odd pixel count and with a flat channel."""
    img = np.ascontiguousarray(photos["astronaut"][:37, :29])
    img[..., 2] = 90  # flat channel: both ops leave it alone
    want_eq, want_ac = img.copy(), img.copy()
    for c in range(3):
        ch = img[..., c]
        hist = np.bincount(ch.ravel(), minlength=256)
        step = (hist.sum() - hist[hist > 0][-1]) // 255
        if step:
            lut = np.concatenate([[0], (np.cumsum(hist) + step // 2) // step])[:256]
            want_eq[..., c] = np.clip(lut, 0, 255)[ch]
        lo, hi = np.float32(ch.min()), np.float32(ch.max())
        if hi > lo:
            scale = np.float32(255) / (hi - lo)
            want_ac[..., c] = np.clip(ch.astype(np.float32) * scale + (-lo * scale), 0, 255)
    np.testing.assert_array_equal(A.apply_op(img, "Equalize"), want_eq)
    np.testing.assert_array_equal(A.apply_op(img, "AutoContrast"), want_ac)
    assert not (want_eq == img).all() and not (want_ac == img).all()


def test_ops_handle_tiny_and_odd_images():
    rng = np.random.default_rng(2)
    for shape in ((1, 1, 3), (2, 5, 3), (7, 3, 3)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        for i, name in enumerate(A.OP_NAMES):
            args = () if A.NUM_ARGS[i] == 0 else (A.level_to_arg(i, 10.0, False, False),)
            out = A.apply_op(img, name, *args, center=(0, 0))
            assert out.shape == img.shape and out.dtype == np.uint8
        if min(shape[:2]) < 3:  # no interior: the smoothed image is the input
            assert (A.apply_op(img, "Sharpness", 1.9) == img).all()
        assert (A.apply_op(img, "Rotate", 0.0) == img).all()


def test_apply_op_returns_a_new_array():
    img = np.full((8, 8, 3), 7, np.uint8)
    out = A.apply_op(img, "Invert")
    assert out is not img and (img == 7).all() and (out == 248).all()
    strided = np.full((8, 16, 3), 7, np.uint8)[:, ::2]  # non-contiguous input is fine
    assert (A.apply_op(strided, "Invert") == 248).all()


# ------------------------------------------------------------------------- validation
@pytest.mark.parametrize("image, name, args, match", [
    (np.zeros((8, 8, 3), np.float32), "Invert", (), "uint8"),
    ([[[0, 0, 0]]], "Invert", (), "uint8"),
    (np.zeros((8, 8), np.uint8), "Invert", (), "HxWx3"),
    (np.zeros((8, 8, 4), np.uint8), "Invert", (), "HxWx3"),
    (np.zeros((0, 8, 3), np.uint8), "Invert", (), "HxWx3"),
    (np.zeros((8, 8, 3), np.uint8), "Blur", (), "unknown op 'Blur'"),
    (np.zeros((8, 8, 3), np.uint8), "Rotate", (), "takes 1 argument"),
    (np.zeros((8, 8, 3), np.uint8), "Invert", (3,), "takes 0 argument"),
    (np.zeros((8, 8, 3), np.uint8), "Rotate", (float("nan"),), "finite"),
    (np.zeros((8, 8, 3), np.uint8), "Rotate", ("30",), "number"),
])
def test_apply_op_rejects_bad_input(image, name, args, match):
    with pytest.raises(ValueError, match=match):
        A.apply_op(image, name, *args)


def test_every_kernel_pins_fastmath_off():
    """numba inherits fastmath/error_model from the caller unless set: FFCV's stages compile
    with fastmath=True, and the cached fastmath build would then break bit-exactness for
    every caller. Every kernel of the module must set both explicitly."""
    from numba.core.registry import CPUDispatcher
    kernels = {name: f for name, f in vars(A).items() if isinstance(f, CPUDispatcher)}
    assert len(kernels) >= 16, sorted(kernels)
    for name, kernel in kernels.items():
        assert kernel.targetoptions.get("fastmath") is False, name
        assert kernel.targetoptions.get("error_model") == "python", name
