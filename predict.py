"""The top-5 classes of images, by a trained ViT, preprocessed exactly as its evals are
(TF's JPEG decode, area resize of the shorter side to 256, centre crop 224, value_range).

    python predict.py runs/s16_90ep photo.jpg more_photos/
    python predict.py vit_s16_i1k_90ep.npz --variant S/16 photo.jpg --top 3

The model: a train_vit.py logging folder (or its checkpoint.pt, which carries its class
list), an export_vit.py .safetensors, or big_vision's published .npz. Classes are printed as wnids with their ImageNet
names when timm is installed (`pip install timm`: its offline wnid -> name table); a
big_vision .npz without timm prints class indices. Folders are searched recursively for
image files.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from vit_speedrun.cli import model_parser
from vit_speedrun.data.images import is_image_name, load_rgb

def image_files(paths):
    """The image files among paths, folders expanded (sorted); raises on a missing path."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if is_image_name(f.name))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def preprocess(path, img_size=224, crop_ratio=224 / 256):
    """float32 [3, img_size, img_size] in [-1, 1]: big_vision's eval preprocessing."""
    from vit_speedrun.pp import ffcv_ops, tf_image
    pixels = np.ascontiguousarray(load_rgb(path))
    out = np.empty((img_size, img_size, 3), np.uint8)
    tf_image.resize_small_central_crop(pixels, round(img_size / crop_ratio), out)
    return torch.from_numpy(ffcv_ops.value_range()[out]).permute(2, 0, 1)


def class_names(classes, n):
    """A label for each of n classes: 'wnid name' (timm's table), the wnid, or the index."""
    try:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        wnids = classes or (info.label_names() if n == 1000 else [])
        return [f"{w} {info.label_name_to_description(w)}" if w in info.label_names() else w
                for w in wnids] or [str(i) for i in range(n)]
    except (ImportError, RuntimeError):   # RuntimeError: a torchvision not built for this torch
        return list(classes) if classes else [str(i) for i in range(n)]


def main(argv=None):
    p = model_parser(__doc__)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top", type=int, default=5, help="classes per image (5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    args = p.parse_args(argv)
    from vit_speedrun.train.checkpoints import CheckpointError, load_model
    try:
        files = image_files(args.images)
        model, classes, config = load_model(args.model, torch.device(args.device), args.variant)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"predict.py: {e}", file=sys.stderr)
        return 2
    if not files:
        print(f"predict.py: no image files in {' '.join(args.images)}", file=sys.stderr)
        return 2
    names = class_names(classes, model.num_classes)
    img_size, ratio = config.get("model.img_size", 224), config.get("eval.crop_ratio", 224 / 256)
    for path in files:
        try:
            x = preprocess(path, img_size, ratio)[None].to(args.device)
        except Exception as e:   # an unreadable file: say which, go on with the others
            print(f"{path}: cannot read it as an image ({type(e).__name__}: {e})")
            continue
        with torch.no_grad():
            probs = torch.softmax(model(x).float(), dim=-1)[0]
        top = torch.topk(probs, min(args.top, probs.numel()))
        print(f"{path}: " + "; ".join(f"{names[i]} {v:.1%}" for v, i in
                                      zip(top.values.tolist(), top.indices.tolist())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
