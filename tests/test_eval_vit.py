"""eval_vit.py and predict.py on the tiny reference run (tiny_runs.py): the evals of a
trained model as the trainer logged them, and predict.py's input as the eval loader's."""
from pathlib import Path

import numpy as np
import pytest
from ffcv.loader import Loader, OrderOption

from vit_speedrun.pp import ffcv_ops
import train_vit
import write_ffcv
from tiny_runs import read_log


def test_eval_vit_scores_a_run_as_the_trainer_did(splits, reference, capsys):
    """eval_vit.py on the run folder gives the final eval's top-1s of the run's own log, and
    the checkpoint carries the class list."""
    import eval_vit
    from vit_speedrun.train.checkpoints import load_model
    _, classes, _ = load_model(reference)
    assert classes == write_ffcv.read_sidecar(splits["train"])["classes"]
    final = [r for r in read_log(reference) if "val_top1" in r][-1]
    assert eval_vit.main([str(reference), "--minival", str(splits["minival"]), "--val",
                          str(splits["val"]), "--real", "--v2", str(splits["v2"]),
                          "--batch-size", "16", "--workers", "2"]) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()
             if line.startswith("RESULT")}
    for name in ("minival", "val", "real", "v2"):
        shown = float(lines[name].split("top-1 ")[1].split("%")[0]) / 100
        assert shown == pytest.approx(final[f"{name}_top1"], abs=5e-5), (name, lines[name])
    assert eval_vit.main([str(reference), "--val", str(splits["other"])]) == 2
    assert "classes are not the model's" in capsys.readouterr().err


def test_predict_preprocesses_as_the_eval_and_prints_top_classes(splits, reference, capsys):
    """predict.py's input for an image file is the eval loader's for the same image, value
    for value; it prints the top classes by wnid, most probable first."""
    import predict
    files = sorted(Path(splits["val"]).parent.glob("val/*/*.jpg"))
    loader = Loader(str(splits["val"]), batch_size=len(files), num_workers=1,
                    order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [ffcv_ops.EvalDecoder(32, round(32 / 0.875)),
                                         ffcv_ops.Normalize()], "label": None})
    train_vit._LOADERS.append(loader)
    want = np.asarray(next(iter(loader))[0])
    assert len(files) == len(want) == 24
    for path, image in zip(files, want):
        got = predict.preprocess(path, 32, 0.875).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, image, err_msg=str(path))
    assert predict.main([str(reference), str(files[0]), str(files[-1].parent), "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 + 6 and out[0].startswith(f"{files[0]}: n0000")
    probs = [float(x.split()[-1][:-1]) for x in out[0].split(": ", 1)[1].split("; ")]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    assert predict.main([str(reference), "no/such/file.jpg"]) == 2
