"""Export a trained ViT: to a .safetensors file (this repo's weights, with the settings that
rebuild the model and its class list), or to a folder that timm's VisionTransformer loads.

    python export_vit.py runs/s16_90ep s16_90ep.safetensors
    python export_vit.py runs/s16_90ep s16_90ep_timm --to timm
    python export_vit.py vit_s16_i1k_90ep.npz --variant S/16 bv_s16_90ep.safetensors

The model: a train_vit.py logging folder (or its checkpoint.pt), big_vision's published .npz,
or an export of this script. A .safetensors export is read back by eval_vit.py, predict.py
and vit_speedrun.models.export.load_safetensors. A timm folder holds model.safetensors
under timm's names and config.json in timm's hub format; load it with
vit_speedrun.models.export.load_timm(folder), which rebuilds the tanh pre-logits head that
timm has no setting for (a model trained without it, model.rep_size=false, also loads with
timm alone: timm.create_model('local-dir:FOLDER', pretrained=True)). Needs safetensors, and
timm for --to timm (requirements-extras.txt, requirements-timm.txt).
"""
import sys

import torch

from vit_speedrun.cli import model_parser


def main(argv=None):
    p = model_parser(__doc__)
    p.add_argument("out", help="the .safetensors file, or (--to timm) the folder, to write")
    p.add_argument("--to", choices=("safetensors", "timm"), default="safetensors",
                   help="what to write (safetensors)")
    args = p.parse_args(argv)
    from vit_speedrun.models import export
    from vit_speedrun.train.checkpoints import CheckpointError, load_model
    if args.to == "safetensors" and not args.out.endswith(".safetensors"):
        p.error(f"{args.out}: name the file *.safetensors (or use --to timm for a folder)")
    try:
        model, classes, _ = load_model(args.model, torch.device("cpu"), args.variant)
        write = export.save_timm if args.to == "timm" else export.save_safetensors
        out = write(model, args.out, classes)
    except (CheckpointError, export.ExportError, FileNotFoundError, ValueError) as e:
        print(f"export_vit.py: {e}", file=sys.stderr)
        return 2
    n = sum(t.numel() for t in model.state_dict().values())
    print(f"wrote {out} ({args.to}): ViT-{model.variant} at {model.img_size[0]} px, "
          f"{model.num_classes} classes, {n:,} numbers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
