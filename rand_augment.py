"""The reference's train preprocessing, and a picture of what it does to a .beton.

big_vision runs `inception_crop|flip_lr|randaug(2,10)|value_range(-1,1)` per image and
then mixes the batch. The operations live in `vit_speedrun/pp/` (ffcv_ops.py: the FFCV
operations and their counter-based draws; pp/tf_image.py: TF's crop sampler, resize and eval
preprocessing; randaug_ops.py: the 16 RandAugment ops); this module is their public face,
`rand_augment.train_pipelines(...)` and the rest as before, plus the picture:

    python rand_augment.py --beton X --out grid.png
    python rand_augment.py -C configs/vit_s16_90ep.yaml --out grid.png

writes a grid of augmented samples: the crop (+ flip), after RandAugment (op names above
each tile), after mixup. `python benchmark.py loader --beton X` times the loader.
"""
import argparse
import os
import sys

import numpy as np

from vit_speedrun.pp.ffcv_ops import *  # noqa: F401,F403 (the pipeline, as README names it)
from vit_speedrun.pp.ffcv_ops import (AugmentClock, is_ffcv_finalizer_noise, mixup_coefficient,
                                      randaug_draws, train_pipelines)
from vit_speedrun.train.config import parse_config


def _to_uint8(batch):
    """float32 NHWC in [-1, 1] -> uint8 for display."""
    return np.clip(np.round((batch + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_grid(beton, out, n=32, seed=0, epoch=0, res=224, alpha=0.2, cols=8,
               randaug=(2, 10), fixed=False, flip=True, crop_area=(0.05, 1.0)):
    """PNG of n samples spread evenly over the .beton (every class of a class-sorted set),
    in groups of `cols` columns and three rows: the crop (+ flip) alone, after RandAugment
    (op names above each tile), and after mixup (alpha). The other arguments are the
    train_pipelines settings, so the grid shows what a run trains on."""
    from ffcv.loader import Loader, OrderOption
    from PIL import Image, ImageDraw
    from ffcv.reader import Reader
    total = int(Reader(str(beton)).num_samples)
    if total < n:
        raise ValueError(f"{beton} holds {total} images, fewer than --n {n}")
    indices = np.linspace(0, total - 1, n).round().astype(np.int64)
    rows = {}
    for name, ra, mix in (('crop', None, 0.0), ('randaug', randaug, 0.0),
                          ('mixup', randaug, alpha)):
        clock = AugmentClock(seed)
        loader = Loader(str(beton), batch_size=n, num_workers=1, indices=indices,
                        order=OrderOption.SEQUENTIAL, drop_last=False,
                        pipelines=train_pipelines(clock, res=res, randaug=ra, fixed=fixed,
                                                  flip=flip, mixup_alpha=mix,
                                                  crop_area=crop_area, num_classes=100000))
        clock.set_epoch(epoch)
        images, labels = next(iter(loader))
        rows[name] = _to_uint8(np.asarray(images))
    a = mixup_coefficient(seed, epoch, 0, alpha)
    cap = 12
    groups = -(-n // cols)
    sheet = Image.new('RGB', (cols * res, groups * 3 * (res + cap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, index in enumerate(indices):
        g, c = divmod(i, cols)
        ops = randaug_draws(seed, epoch, index, res, res, *(randaug or (0, 0)), fixed=fixed)
        captions = (f"#{index} crop" + ("+flip" if flip else ""),
                    "+".join(op for op, _, _ in ops) or "no RandAugment",
                    f"mix a={a:.3f} w/ #{indices[(i - 1) % n]}")
        for r, key in enumerate(('crop', 'randaug', 'mixup')):
            y0 = (g * 3 + r) * (res + cap)
            sheet.paste(Image.fromarray(rows[key][i]), (c * res, y0 + cap))
            draw.text((c * res + 2, y0), captions[r][:res // 6], fill=(0, 0, 0))
    tmp = f"{out}.tmp.png"
    sheet.save(tmp)
    os.replace(tmp, out)
    return out


def grid_settings(config_files):
    """write_grid's settings from train_vit config files (their defaults where unset)."""
    config = parse_config(["--config-file", *config_files])  # the trainer's own parsing
    layers = config["augment.randaug_layers"]
    return dict(beton=config["data.train_dataset"], seed=config["training.seed"],
                res=config["model.img_size"], alpha=config["augment.mixup_alpha"],
                randaug=(layers, config["augment.randaug_magnitude"]) if layers else None,
                fixed=config["augment.randaug_fixed"], flip=config["augment.flip"],
                crop_area=(config["augment.crop_area_min"], 1.0))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config-file', '-C', action='append', default=[],
                   help="train_vit config(s): its train set and augmentation settings "
                        "(else the recipe's)")
    p.add_argument('--beton', help="a .beton with 'image' and 'label' (default: the "
                                   "config's data.train_dataset)")
    p.add_argument('--out', required=True, help="write a PNG grid of augmented samples here")
    p.add_argument('--n', type=int, default=32, help="samples, spread evenly over the set")
    p.add_argument('--epoch', type=int, default=0)
    args = p.parse_args(argv)
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: None if is_ffcv_finalizer_noise(u) else hook(u)
    settings = grid_settings(args.config_file) if args.config_file else {}
    settings['beton'] = args.beton or settings.get('beton')
    if not settings['beton'] or not os.path.exists(settings['beton']):
        p.error(f"--beton {settings['beton']}: no such file (write one with write_ffcv.py, "
                f"or give --config-file whose data.train_dataset exists)")
    print("wrote", write_grid(out=args.out, n=args.n, epoch=args.epoch, **settings))


if __name__ == '__main__':
    main()
