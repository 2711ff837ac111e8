"""pp/tf_image.py against TensorFlow's own outputs (tests/data/tf_*.npz, TF 2.15.1):
the crop sampler by distribution (its random numbers are ours, not TF's Philox), the
train bilinear resize and the eval area resize + central crop value for value, and both
FFCV decoders through real Loaders."""
import gc
import sys

import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

from vit_speedrun.pp import ffcv_ops as ra
from vit_speedrun.pp import tf_image as T
from conftest import DATA

GOLDEN = DATA
AREA, ASPECT = (0.05, 1.0), (0.75, 1.33)
N_DRAWS = 50_000


def ks_statistic(a, b):
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two ECDFs."""
    a, b = np.sort(a), np.sort(b)
    v = np.union1d(a, b)
    return np.abs(np.searchsorted(a, v, "right") / a.size
                  - np.searchsorted(b, v, "right") / b.size).max()


# ------------------------------------------------------------------------ crop sampler
@pytest.fixture(scope="module")
def crop_golden():
    return np.load(GOLDEN / "tf_crop_samples.npz")


@pytest.mark.parametrize("shape", ["300x400", "480x640", "256x256", "150x600", "1200x900"])
def test_crop_distribution_matches_tf(crop_golden, shape, capsys):
    height, width = map(int, shape.split("x"))
    tf = crop_golden[f"crops_{shape}"].astype(np.int64)
    ours = ra.sample_crops(5, 0, np.arange(N_DRAWS), height, width)
    stats = {}
    for name, f in (("h", lambda c: c[:, 2]), ("w", lambda c: c[:, 3]),
                    ("area", lambda c: c[:, 2] * c[:, 3]), ("y", lambda c: c[:, 0]),
                    ("x", lambda c: c[:, 1])):
        stats[name] = ks_statistic(f(ours), f(tf))
    whole = [((c[:, 2] == height) & (c[:, 3] == width)).mean() for c in (ours, tf)]
    with capsys.disabled():
        print(f"\n{shape}: KS " + " ".join(f"{k}={v:.4f}" for k, v in stats.items())
              + f"; whole image ours {whole[0]:.5f} TF {whole[1]:.5f}")
    assert max(stats.values()) < 0.02, stats
    assert abs(whole[0] - whole[1]) < 0.001
    # TF's off-by-one: a crop reaches the bottom/right edge only when it spans that side
    for c in (ours, tf):
        y, x, h, w = c.T
        assert ((y + h < height) | (h == height)).all() and ((x + w < width) | (w == width)).all()
        assert (y >= 0).all() and (x >= 0).all()


def _spec_attempt(height, width, ar, u_h, u_y, u_x, area_lo=0.05, area_hi=1.0):
    """RECIPE.md's GenerateRandomCrop, written again with numpy float32 scalars."""
    f32, ar = np.float32, np.float32(ar)
    lrint = lambda v: int(np.rint(v))  # noqa: E731
    min_area = f32(f32(area_lo) * f32(width)) * f32(height)
    max_area = f32(f32(area_hi) * f32(width)) * f32(height)
    h, hmax = lrint(np.sqrt(min_area / ar)), lrint(np.sqrt(max_area / ar))
    if lrint(f32(hmax) * ar) > width:
        hmax = int((width + 0.5 - float(f32(1e-7))) / float(ar))
        if lrint(f32(hmax) * ar) > width:
            hmax -= 1
    hmax = min(hmax, height)
    h = hmax if h >= hmax else h + int(u_h * (hmax - h + 1))
    w = lrint(f32(h) * ar)
    if f32(w * h) < min_area:
        h += 1
        w = lrint(f32(h) * ar)
    if f32(w * h) > max_area:
        h -= 1
        w = lrint(f32(h) * ar)
    if not (min_area <= f32(w * h) <= max_area and 0 < w <= width and 0 < h <= height):
        return False, 0, 0, 0, 0
    y = int(u_y * (height - h)) if h < height else 0
    x = int(u_x * (width - w)) if w < width else 0
    return True, y, x, h, w


def test_generate_random_crop_equals_the_float32_spec():
    rng = np.random.default_rng(1)
    shapes = [(300, 400), (1, 1000), (1000, 1), (1000, 191), (150, 600), (600, 150),
              (7, 9), (2000, 40), (333, 500), (256, 256)]
    fails = 0
    for height, width in shapes:
        for u in rng.random((2000, 4)):
            ar = T.crop_aspect(u[0], *ASPECT)
            got = T.generate_random_crop(height, width, *AREA, ar, *u[1:])
            assert got == _spec_attempt(height, width, ar, *u[1:]), (height, width, u)
            fails += not got[0]
    assert fails > 0      # the thin shapes exercise the failure paths


def test_crop_corner_cases():
    # aspect draws: 23-bit uniforms, float32 arithmetic, inside [0.75, 1.33)
    assert T.crop_aspect(0.0, *ASPECT) == np.float32(0.75)
    top = T.crop_aspect(1 - 2 ** -30, *ASPECT)
    assert top < np.float32(1.33) and top == np.float32(1 - 2 ** -23) * (
        np.float32(1.33) - np.float32(0.75)) + np.float32(0.75)
    # hmax clamp on a narrow image: lrint(hmax * ar) > W, so hmax = int((W + 0.5 - eps) / ar)
    assert T.generate_random_crop(600, 150, *AREA, np.float32(0.75), 0.999, 0, 0)[3:] == (200, 150)
    assert T.generate_random_crop(600, 150, *AREA, np.float32(1.33), 0.999, 0, 0)[3:] == (113, 150)
    # ... and the float32 product still rounds above W: one more step down (227 -> 226)
    ar = np.float32(0.8436123132705688)
    assert np.rint(np.float32(227) * ar) == 192
    assert T.generate_random_crop(1000, 191, *AREA, ar, 0.999, 0, 0)[3:] == (226, 191)
    # the height is capped by the image: on 150x600 no box is taller than 150
    assert T.generate_random_crop(150, 600, *AREA, np.float32(0.75), 0.999, 0, 0)[3:] == (150, 112)
    # every attempt fails on 1-pixel-thin images (5% of the area needs a long box): fallback
    for height, width in ((1, 1000), (1000, 1)):
        assert not any(T.generate_random_crop(height, width, *AREA,
                                              T.crop_aspect(u, *ASPECT), 0.5, 0.5, 0.5)[0]
                       for u in np.linspace(0, 0.999, 50))
        crops = ra.sample_crops(3, 0, np.arange(100), height, width)
        assert (crops == [0, 0, height, width]).all()
    # offsets stop one short of the edge: u -> 1 gives H - h - 1; h == H gives 0
    ok, y, x, h, w = T.generate_random_crop(300, 400, *AREA, np.float32(1.0), 0.3,
                                            1 - 1e-12, 1 - 1e-12)
    assert ok and (y, x) == (300 - h - 1, 400 - w - 1)
    assert T.generate_random_crop(256, 256, *AREA, np.float32(1.0), 0.9999, 0.7, 0.7) == (
        True, 0, 0, 256, 256)


# ------------------------------------------------------------------------ train resize
@pytest.fixture(scope="module")
def resize_golden():
    return np.load(GOLDEN / "tf_resize.npz")


def test_bilinear_resize_equals_tf(resize_golden, capsys):
    z = resize_golden
    rows = []
    for b, (p, y, x, h, w) in enumerate(z["boxes"]):
        photo = z[f"photo_{p}"]
        out = T.resize_bilinear(photo, y, x, h, w, np.empty((224, 224, 3), np.uint8))
        crop = np.ascontiguousarray(photo[y:y + h, x:x + w])
        alone = T.resize_bilinear(crop, 0, 0, h, w, np.empty((224, 224, 3), np.uint8))
        assert np.array_equal(out, alone), "a view and a separate crop must agree"
        diff = np.abs(out.astype(int) - z["out"][b])
        rows.append((z["kind"][b], z["tags"][b], (diff == 0).mean(), diff.max()))
    with capsys.disabled():
        for kind in ("up", "down", "mixed"):
            sel = [r for r in rows if r[0] == kind]
            print(f"\nbilinear {kind}: {len(sel)} boxes, exact "
                  f"{np.mean([r[2] for r in sel]):.6f}, max diff {max(r[3] for r in sel)}", end="")
        for tag in ("identity", "edge", "whole", "thin", "tf_sampler"):
            sel = [r for r in rows if tag in r[1].split(",")]
            print(f"\nbilinear tag {tag}: {len(sel)} boxes, exact "
                  f"{np.mean([r[2] for r in sel]):.6f}", end="")
    assert all(r[2] == 1.0 for r in rows), [(i, r) for i, r in enumerate(rows) if r[2] < 1]


def test_bilinear_resize_other_sizes_and_flat_inputs():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    # identity: a crop the size of the output is copied
    out = T.resize_bilinear(img, 5, 7, 20, 30, np.empty((20, 30, 3), np.uint8))
    assert np.array_equal(out, img[5:25, 7:37])
    # a constant image stays constant whatever the scale (no drift from float32 rounding)
    flat = np.full((40, 50, 3), 255, np.uint8)
    for oh, ow in ((7, 300), (224, 224), (1, 1)):
        assert (T.resize_bilinear(flat, 3, 4, 17, 29, np.empty((oh, ow, 3), np.uint8)) == 255).all()
    # exact 2x downscale with half-pixel centres averages 2x2 blocks (truncated)
    out = T.resize_bilinear(img, 0, 0, 40, 50, np.empty((20, 25, 3), np.uint8))
    blocks = img.reshape(20, 2, 25, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(out - np.floor(blocks)).max() <= 1


# ------------------------------------------------------------------------ eval
@pytest.fixture(scope="module")
def eval_golden():
    return np.load(GOLDEN / "tf_eval.npz")


def test_resize_small_size_rule(eval_golden):
    for i, (h, w) in enumerate(eval_golden["resized_hw"]):
        photo = eval_golden[f"photo_{i}"]
        assert T.resize_small_size(*photo.shape[:2], 256) == (h, w)
    assert T.resize_small_size(512, 681, 256) == (256, 340)      # 340.5 -> 340 (even)
    assert T.resize_small_size(300, 224, 256) == (343, 256)      # upscale
    assert T.eval_window(512, 681, 256, 224, 224) == (256, 340, 16, 58)


def test_area_resize_and_central_crop_equal_tf(eval_golden, capsys):
    z = eval_golden
    for i, name in enumerate(z["names"]):
        photo, small = z[f"photo_{i}"], z[f"small_{i}"]
        nh, nw = small.shape[:2]
        ours = T.resize_area(photo, nh, nw, 0, 0, np.empty_like(small))
        out = T.resize_small_central_crop(photo, 256, np.empty((224, 224, 3), np.uint8))
        exact_small, exact_out = (ours == small).mean(), (out == z["out"][i]).mean()
        with capsys.disabled():
            print(f"\narea {name} {photo.shape[:2]} -> {small.shape[:2]}: small exact "
                  f"{exact_small:.6f}, out exact {exact_out:.6f}", end="")
        assert exact_small == 1.0 and exact_out == 1.0, name
        # a window equals the same slice of the full resize
        win = T.resize_area(photo, nh, nw, 9, 13, np.empty((31, 17, 3), np.uint8))
        assert np.array_equal(win, small[9:40, 13:30])


def _loader(path, pipelines, n):
    from ffcv.loader import Loader, OrderOption
    return Loader(path, batch_size=n, num_workers=1, order=OrderOption.SEQUENTIAL,
                  drop_last=False, pipelines=pipelines)


def _write(path, images, mode):
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    writer = DatasetWriter(str(path), {"image": RGBImageField(write_mode=mode, jpeg_quality=90),
                                       "label": IntField()}, num_workers=1, page_size=1 << 23)
    writer.from_indexed_dataset([(img, i) for i, img in enumerate(images)])
    return str(path)


@pytest.fixture
def quiet_finalizers():
    yield
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: None if ra.is_ffcv_finalizer_noise(u) else hook(u)
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


def test_eval_decoder_through_a_loader_equals_tf(eval_golden, tmp_path, quiet_finalizers):
    from ffcv.fields.basics import IntDecoder
    n = len(eval_golden["names"])
    photos = [eval_golden[f"photo_{i}"] for i in range(n)]
    path = _write(tmp_path / "eval.beton", photos, "raw")
    loader = _loader(path, {"image": [ra.EvalDecoder(224, 256), ra.Normalize()],
                            "label": [IntDecoder()]}, n)
    images, labels = next(iter(loader))
    assert np.asarray(images).dtype == np.float32 and images.shape == (n, 224, 224, 3)
    want = ra.value_range()[eval_golden["out"]]
    assert np.array_equal(np.asarray(images), want)
    assert np.array_equal(np.asarray(labels).ravel(), np.arange(n))
    with pytest.raises(ValueError, match="smaller than the crop"):
        ra.EvalDecoder(224, 200)


def test_jpeg_decoders_decode_then_run_the_kernels(photos, tmp_path, quiet_finalizers):
    """The JPEG branch of both decoders: FFCV's imdecode of the stored bytes, then the
    eval kernels / the crop sampler and bilinear resize, as computed here directly."""
    import cv2
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import encode_jpeg
    from ffcv.libffcv import imdecode
    images = [np.ascontiguousarray(cv2.resize(photos[k], (w, h), interpolation=cv2.INTER_AREA))
              for k, (h, w) in (("astronaut", (300, 260)), ("coffee", (200, 301)),
                                ("chelsea", (240, 240)))]
    path = _write(tmp_path / "jpg.beton", images, "jpg")
    decoded = []
    for img in images:
        data = encode_jpeg(img, 90)
        out = np.empty_like(img)
        imdecode(data, out, *img.shape[:2], *img.shape[:2], 0, 0, 1, 1, False, False)
        decoded.append(out)
    n = len(images)
    got = _loader(path, {"image": [ra.EvalDecoder(64, 80)], "label": [IntDecoder()]}, n)
    got = np.asarray(next(iter(got))[0])
    for i, img in enumerate(decoded):
        want = T.resize_small_central_crop(img, 80, np.empty((64, 64, 3), np.uint8))
        assert np.array_equal(got[i], want), i


def test_inception_crop_decodes_the_window_alone(photos, tmp_path, quiet_finalizers):
    """The train decoder on stored JPEG bytes is TF's decode_and_crop_jpeg of the sampled
    window (jpeg_window, itself checked against TF in tests/jpeg/test_window.py), then TF's
    bilinear resize: not a full decode sliced, which differs in the window's edge columns
    on 4:2:0 files for about half of the windows."""
    from vit_speedrun.jpeg import window as jpeg_window
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import encode_jpeg
    names = sorted(photos)
    images = [np.ascontiguousarray(photos[names[k % len(names)]][k:k + 150 + 7 * k,
                                                                  2 * k:2 * k + 201 - 5 * k])
              for k in range(12)]
    path = _write(tmp_path / "jpg.beton", images, "jpg")
    datas = [encode_jpeg(img, 90) for img in images]   # the bytes the writer stored
    clock = ra.AugmentClock(4)
    loader = _loader(path, {"image": [ra.InceptionCropDecoder(clock, 48)],
                            "label": [IntDecoder()]}, len(images))
    clock.set_epoch(2)
    got = np.asarray(next(iter(loader))[0])
    differs = 0
    for i, (img, data) in enumerate(zip(images, datas)):
        y, x, h, w = ra.sample_crop(4, 2, i, *img.shape[:2], *AREA, *ASPECT, 100)
        window = jpeg_window.decode_window(data, y, x, h, w)
        want = T.resize_bilinear(window, 0, 0, h, w, np.empty((48, 48, 3), np.uint8))
        assert np.array_equal(got[i], want), i
        sliced = jpeg_window.decode(data)
        differs += not np.array_equal(window, sliced[y:y + h, x:x + w])
    print(f"{differs} of {len(images)} windows differ from a sliced full decode")
    assert differs >= 2, "no window here tells a cropped decode from a sliced one"


# ------------------------------------------------------------------------ house rules
@pytest.mark.parametrize("module", [T, ra], ids=["tf_image", "ffcv_ops"])
def test_every_kernel_pins_fastmath_off(module):
    """As in test_augment_ops: FFCV compiles its stages with fastmath=True and numba hands
    that to callees that leave it unset, which would break the bit-exact float32 here."""
    kernels = {name: f for name, f in vars(module).items() if isinstance(f, CPUDispatcher)}
    assert len(kernels) >= 8, sorted(kernels)
    for name, kernel in kernels.items():
        assert kernel.targetoptions.get("fastmath") is False, name
        assert kernel.targetoptions.get("error_model") == "python", name
