"""Generated ImageNet-like photographs: the one photo maker of benchmarks and tests.

Real photographs, not noise: scikit-image's bundled colour photos (inside its wheel, no
download) cropped and textured so that files have ImageNet's size, and so its entropy-coded
bytes, which is what every JPEG decoder's cost scales with.
"""
from pathlib import Path


def make_photo_folder(out, n=400, classes=4, seed=0, texture=1.2, noise=13.0):
    """An ImageFolder (`classes` folders) of n ImageNet-like JPEGs; returns (folder, mean kB).

    500x375 or 375x500, quality 90, 4:2:0 like most of ImageNet: crops of scikit-image's
    bundled colour photographs plus one of its grayscale textures (grass, gravel, brick, times
    `texture`) and Gaussian sensor noise (sigma `noise`). The defaults give ~105 kB files, as
    ImageNet's are at that size; the smooth photographs alone give a third of that, which
    would understate every decoder's cost (entropy decoding scales with the bytes)."""
    import numpy as np
    import skimage.data
    from PIL import Image
    rng = np.random.default_rng(seed)
    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
    photos = [getattr(skimage.data, k)()[..., :3] for k in names]
    photos.append(skimage.data.stereo_motorcycle()[0])
    textures = [getattr(skimage.data, k)().astype(np.float32) for k in ("grass", "gravel",
                                                                       "brick")]
    total = 0
    for i in range(n):
        photo = photos[i % len(photos)]
        size = (500, 375) if i % 4 else (375, 500)
        side = rng.uniform(0.6, 1.0) * min(photo.shape[:2])
        crop_w, crop_h = (side, side * 0.75) if size[0] > size[1] else (side * 0.75, side)
        y0 = rng.uniform(0, photo.shape[0] - crop_h)
        x0 = rng.uniform(0, photo.shape[1] - crop_w)
        img = Image.fromarray(photo).resize(size, Image.BILINEAR,
                                            box=(x0, y0, x0 + crop_w, y0 + crop_h))
        tex = textures[i % len(textures)]
        tex = np.asarray(Image.fromarray(tex - tex.mean()).resize(size, Image.BILINEAR))
        noisy = (np.asarray(img, np.float32) + texture * tex[..., None]
                 + rng.normal(0, noise, (size[1], size[0], 3)))
        folder = Path(out) / f"n{i % len(photos) % classes:08d}"  # the class is the photo's
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.JPEG"
        Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8)).save(
            path, quality=90, subsampling=2)
        total += path.stat().st_size
    return Path(out), total / max(n, 1) / 1e3
