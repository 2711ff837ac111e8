"""Score a trained ViT on the eval .betons without training: top-1 on minival, val, ReaL and
ImageNet-v2 exactly as train_vit.py reports them (big_vision's eval preprocessing: TF's
decode, area resize of the shorter side to 256, centre crop 224, value_range(-1, 1)).

    python eval_vit.py runs/s16_90ep --val /data/ffcv/val.beton --real --v2 /data/ffcv/v2.beton
    python eval_vit.py vit_s16_i1k_90ep.npz --variant S/16 --val /data/ffcv/val.beton --real

The model: a train_vit.py logging folder (or its checkpoint.pt), an export_vit.py
.safetensors, or big_vision's own published checkpoint (.npz; the paper's 76.5 / 83.1 /
64.2 top-1 at 90 epochs on val, ReaL, v2 are its figures). Prints one line per set and
writes nothing.
"""
import os
import sys

os.environ.setdefault("NUMBA_THREADING_LAYER", "threadsafe")   # as train_vit.py

import torch  # noqa: E402

from vit_speedrun.cli import model_parser  # noqa: E402


def main(argv=None):
    p = model_parser(__doc__)
    for name in ("minival", "val", "v2"):
        p.add_argument(f"--{name}", default="", metavar="BETON", help=f"the {name} .beton")
    p.add_argument("--real", action="store_true", help="also ReaL top-1 (the val .beton's "
                                                       "'real' field)")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (256)")
    p.add_argument("--workers", type=int, default=0, help="decoding threads (0: all cores)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="autocast dtype, as the trainer's evals (bf16)")
    args = p.parse_args(argv)
    if not (args.minival or args.val or args.v2):
        p.error("name at least one eval set: --minival, --val or --v2 (a .beton)")
    if args.real and not args.val:
        p.error("--real scores the val set: give --val too")
    from vit_speedrun.data.betons import ConversionError, check_beton, read_sidecar
    from vit_speedrun.pp import ffcv_ops
    from vit_speedrun.train import evaluate
    from vit_speedrun.train.checkpoints import CheckpointError, load_model
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    try:
        model, classes, config = load_model(args.model, device, args.variant)
        sidecars = {}
        for name in ("minival", "val", "v2"):
            path = getattr(args, name)
            if path:
                check_beton(path)
                sidecars[name] = (path, read_sidecar(path))
                theirs = sidecars[name][1]["classes"]
                if classes and theirs != classes and name != "v2":
                    raise ConversionError(f"{path}: its {len(theirs)} classes are not the "
                                          f"model's {len(classes)} (in wnid order); convert "
                                          f"it from the same ImageNet as the train set")
        if args.real and not sidecars["val"][1].get("has_real"):
            raise ConversionError(f"{args.val} has no ReaL labels: convert it with "
                                  f"write_ffcv.py --cfg.real_labels=real.json")
    except (CheckpointError, ConversionError, ValueError) as e:
        print(f"eval_vit.py: {e}", file=sys.stderr)
        return 2
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: None if ffcv_ops.is_ffcv_finalizer_noise(u) else hook(u)
    img_size = config.get("model.img_size", 224)
    sets = evaluate.eval_loaders(sidecars, device, 0, 1, args.batch_size,
                                 args.workers or os.cpu_count(), True, args.real, img_size,
                                 config.get("eval.crop_ratio", 224 / 256))
    record = evaluate.evaluate(model, sets, device, model.num_classes, args.precision)
    print(f"{args.model}: ViT-{config.get('model.variant')} at {img_size} px on {device}")
    for key in ("minival_top1", "val_top1", "real_top1", "v2_top1"):
        if key in record:
            n = sidecars["val" if key == "real_top1" else key[:-5]][1]["num_images"]
            print(f"RESULT {key[:-5]:>8} top-1 {record[key]:.2%} ({n:,} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
