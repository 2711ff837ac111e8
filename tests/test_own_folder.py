"""README's "Your own photos" lines, run as written in a fresh folder: a folder of photos
to .betons, configs/own_folder.yaml trained, predict.py on a photo. Only what makes it
fit a test is appended to the train line (a tiny model, 3 steps, fp32 on this CPU)."""
import json
import re
import shlex
import shutil
import subprocess
import sys

from conftest import ROOT
from vit_speedrun.data.photos import make_photo_folder

# The train line's additions: what the test's CPU and time allow, nothing about the data.
SHRINK = ["--model.variant=pico/8", "--model.img_size=32", "--training.precision=fp32",
          "--training.max_steps=3", "--training.batch_size=8", "--eval.batch_size=8",
          "--data.num_workers=1", "--logging.progress=0"]


def readme_lines():
    """The bash block under README's own-folder marker, one command a line."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- own-folder:.*?-->\n```bash\n(.*?)```", text, re.S)
    assert block, "README lost its own-folder block (the marker comment above it)"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


def test_readme_own_folder_lines_work_as_written(tmp_path):
    make_photo_folder(tmp_path / "my_photos", n=60, classes=3)
    shutil.copy(next((tmp_path / "my_photos").rglob("*.JPEG")), tmp_path / "photo.jpg")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    lines = readme_lines()
    assert [argv[:2] for argv in lines] == [["python", "write_ffcv.py"]] * 2 + [
        ["python", "train_vit.py"], ["python", "predict.py"]]
    outputs = []
    for argv in lines:
        cmd = [sys.executable, str(ROOT / argv[1]), *argv[2:]]
        cmd += SHRINK if argv[1] == "train_vit.py" else []
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    sizes = [json.loads((tmp_path / f"my_ffcv/{s}.beton.json").read_text())["num_images"]
             for s in ("train", "minival")]
    assert sum(sizes) == 60 and sizes[1] >= 3          # one or more of every class held out
    summary = json.loads((tmp_path / "runs/my_photos/summary.json").read_text())
    assert summary["final"].keys() == {"minival_top1"}
    assert (tmp_path / "runs/my_photos/checkpoint.pt").is_file()
    prediction = outputs[-1].strip().splitlines()
    assert len(prediction) == 1 and prediction[0].startswith("photo.jpg: ")
    assert len(re.findall(r"n0000000\d \d+\.\d%", prediction[0])) == 3   # the 3 classes, named
