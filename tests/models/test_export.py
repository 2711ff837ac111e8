"""vit_speedrun/models/export.py and export_vit.py: a .safetensors file that rebuilds the
model bit for bit, and timm's VisionTransformer computing what our ViT computes on real
photographs (float32), for every head and pooling layout.

timm runs in a subprocess with .venv/timm on its path (requirements-timm.txt says why it
lives there, torchvision_ops.py what makes it import beside CPU torch): its torchvision
stays out of this process, where torchmetrics would import it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, real_photos
from vit_speedrun.models import export, vit
from vit_speedrun.train.checkpoints import load_model

TIMM_DIR = ROOT / ".venv" / "timm"   # make install's; absent where timm is installed normally
LAYOUTS = {   # name: ViT settings; each is exported and compared
    "recipe": dict(variant="S/16", img_size=224),                      # GAP, sincos, tanh head
    "token_learned_linear": dict(variant="mu/8", img_size=32, pool_type="tok", posemb="learn",
                                 rep_size=False),
    "wide_pre_logits": dict(variant="mu/8", img_size=48, rep_size=40),
}


def trained_like(settings, seed=0):
    """A ViT whose every number matters: a nonzero head, LayerNorms off their init."""
    torch.manual_seed(seed)
    model = vit.ViT(num_classes=7, head_zeroinit=False, **settings)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, torch.nn.Linear):
                m.bias.normal_(0, 0.02)
    return model.eval()


def photo_files(folder):
    """Three real photographs as JPEG files in folder."""
    from PIL import Image
    paths = []
    for name, img in sorted(real_photos().items())[:3]:
        paths.append(folder / f"{name}.jpg")
        if not paths[-1].exists():
            Image.fromarray(img).save(paths[-1], quality=90)
    return paths


def photo_batch(img_size, folder):
    """Real photographs through predict.py's eval preprocessing (TF decode, resize, crop)."""
    import predict
    return torch.stack([predict.preprocess(p, img_size, 0.875) for p in photo_files(folder)])


def test_safetensors_round_trip_is_exact(tmp_path):
    for name, settings in LAYOUTS.items():
        model = trained_like(settings)
        path = export.save_safetensors(model, tmp_path / f"{name}.safetensors", ["a", "b"])
        back, classes = export.load_safetensors(path)
        assert classes == ["a", "b"] and export.model_settings(back) == export.model_settings(model)
        for k, v in model.state_dict().items():
            assert torch.equal(back.state_dict()[k], v), (name, k)
        x = photo_batch(model.img_size[0], tmp_path)
        with torch.no_grad():
            assert torch.equal(back.eval()(x), model(x)), name
        assert not list(tmp_path.glob(".*tmp*"))   # no temporaries left


def test_export_errors_name_what_to_do(tmp_path, monkeypatch):
    model = trained_like(LAYOUTS["wide_pre_logits"])
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)   # as if not installed
    with pytest.raises(export.ExportError, match="pip install safetensors"):
        export.save_safetensors(model, tmp_path / "m.safetensors")
    monkeypatch.undo()
    (tmp_path / "junk.safetensors").write_bytes(b"\x10" * 64)
    with pytest.raises(export.ExportError, match="not a readable .safetensors"):
        export.load_safetensors(tmp_path / "junk.safetensors")
    import safetensors.torch as st
    st.save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(export.ExportError, match="only export_vit.py's files"):
        export.load_safetensors(tmp_path / "other.safetensors")

    def fail_midway(state, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(st, "save_file", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        export.save_safetensors(model, tmp_path / "half.safetensors")
    assert not [p for p in tmp_path.iterdir() if "half" in p.name]   # no partial file left


def test_export_vit_safetensors_of_a_checkpoint_predicts_the_same(tmp_path, capsys):
    """export_vit.py from a checkpoint; predict.py on the export prints what it prints on the
    checkpoint, and load_model reads the classes back."""
    import export_vit
    import predict
    from vit_speedrun.train import checkpoints
    model = trained_like(LAYOUTS["token_learned_linear"])
    config = {"model.variant": "mu/8", "model.img_size": 32, "model.pool_type": "tok",
              "model.posemb": "learn", "model.rep_size": False, "eval.crop_ratio": 0.875}
    torch.save({"model": model.state_dict(), "config": config, "classes": list("abcdefg")},
               tmp_path / checkpoints.CURRENT)
    out = tmp_path / "m.safetensors"
    assert export_vit.main([str(tmp_path), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    _, classes, _ = load_model(out)
    assert classes == list("abcdefg")
    photo = photo_files(tmp_path)[0]
    printed = []
    for source in (tmp_path, out):
        assert predict.main([str(source), str(photo)]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and printed[0].count("%") == 5
    with pytest.raises(SystemExit):   # argparse's error: name the file *.safetensors
        export_vit.main([str(tmp_path), str(tmp_path / "m.pt")])
    assert "name the file *.safetensors" in capsys.readouterr().err
    assert export_vit.main([str(tmp_path / "none"), str(out)]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


# --- timm, in a subprocess --------------------------------------------------------------------
def timm_checks(tmp):
    """Run by test_timm_forward_equals_ours in a process with timm importable: for every
    layout, timm's forward equals ours on real photographs; the saved folder loads back to
    the same numbers; a model without pre-logits loads in timm alone (local-dir)."""
    import timm
    for name, settings in LAYOUTS.items():
        model = trained_like(settings)
        x = photo_batch(model.img_size[0], tmp)
        with torch.no_grad():
            ours = model(x)
            theirs = export.to_timm(model)(x)
            np.testing.assert_allclose(theirs.numpy(), ours.numpy(), rtol=0, atol=5e-6,
                                       err_msg=name)
            assert ours.abs().max() > 0.1, name   # a real output, not a zero head's
            folder = export.save_timm(model, tmp / name, list("abcdefg"))
            loaded, classes = export.load_timm(folder)
            assert classes == list("abcdefg")
            assert torch.equal(loaded(x), theirs), name
            assert loaded.pos_embed.requires_grad == (model.posemb == "learn"), name
            config = json.loads((folder / "config.json").read_text())
            assert config["pretrained_cfg"]["label_names"] == list("abcdefg")
            if not model.rep_size:
                alone = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
                assert torch.equal(alone(x), theirs), name
    print("TIMM CHECKS PASSED", timm.__version__)


def test_timm_forward_equals_ours(tmp_path):
    paths = [str(p) for p in (TIMM_DIR, ROOT, ROOT / "tests", ROOT / "tests" / "models")]
    code = ("import sys; sys.path[:0] = " + repr(paths) + "\n"
            "import torchvision_ops; torchvision_ops.allow_torchvision_import()\n"
            "import pathlib, test_export; test_export.timm_checks(pathlib.Path(sys.argv[1]))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=600)
    if "No module named 'timm'" in done.stderr:
        pytest.skip("timm is not installed: make install puts it in .venv/timm")
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "TIMM CHECKS PASSED" in done.stdout


def test_timm_export_without_timm_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setitem(sys.modules, "timm.models.vision_transformer", None)
    with pytest.raises(export.ExportError, match="pip install timm"):
        export.save_timm(trained_like(LAYOUTS["wide_pre_logits"]), tmp_path / "t")
    assert not list(tmp_path.iterdir())
