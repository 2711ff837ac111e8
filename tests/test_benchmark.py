"""benchmark.py's commands run on CPU and print what README quotes: each is run through
its real path (train_vit's step, rand_augment's loader, write_ffcv's storage modes,
train_vit.main) on tiny inputs, and its RESULT lines are checked."""
import re
import time

import pytest
import torch

import benchmark
from conftest import ROOT
from vit_speedrun.data.photos import make_photo_folder


def results(text):
    return [line for line in text.splitlines() if line.startswith("RESULT")]


def number(pattern, text):
    return float(re.search(pattern, text).group(1).replace(",", ""))


def test_project_takes_the_slower_of_gpus_and_data():
    gpu_rate, data_rate, rows = benchmark.project(3000, 500, gpus=8, cores=128)
    assert (gpu_rate, data_rate) == (24_000, 64_000)
    ninety = rows[0]
    assert ninety["bound"] == "GPU"
    assert ninety["hours"] == pytest.approx(90 * benchmark.IMAGENET_TRAIN / 24_000 / 3600)
    assert ninety["tpu_hours"] == pytest.approx(6.5)
    _, _, rows = benchmark.project(3000, 100, gpus=8, cores=128)
    assert rows[2]["bound"] == "data"
    assert rows[2]["hours"] == pytest.approx(300 * benchmark.IMAGENET_TRAIN / 12_800 / 3600)


def test_project_without_gpu_figure_is_a_data_bound_lower_bound(capsys):
    _, data_rate, rows = benchmark.project(None, 821, gpus=8, cores=128)
    assert rows[0]["bound"] == "data"
    assert rows[0]["hours"] == pytest.approx(90 * benchmark.IMAGENET_TRAIN / (821 * 128) / 3600)
    benchmark.main(["project", "--loader-img-s-per-core", "821"])
    out = capsys.readouterr().out
    assert "not measured yet" in out and all("at least" in x for x in results(out))


def test_project_cli_marks_projections(capsys):
    benchmark.main(["project", "--step-img-s", "3000", "--loader-img-s-per-core", "900"])
    out = capsys.readouterr().out
    assert "projection (not a measurement)" in out
    assert len(results(out)) == 3 and "6 h 30 (reported)" in out


def test_step_on_cpu_reports_speed_and_mfu(capsys):
    benchmark.main(["step", "--variant", "mu/8", "--img-size", "32", "--batch-size", "8",
                    "--steps", "3", "--warmup", "1", "--device", "cpu", "--precision", "fp32"])
    out = capsys.readouterr().out
    line = results(out)[-1]
    assert number(r"([\d,.]+) img/s", line) > 0
    assert 0 < number(r"MFU ([\d.]+)%", line)
    assert "optimizer alone" in out and "recompiles after the first step: 0" in out


def test_flash_check_uses_the_models_attention_shape():
    # vit.VARIANTS is (width, depth, mlp_dim, num_heads): S/16 has 6 heads of 64
    assert benchmark.attention_shape("S/16", 128) == (128, 6, 196, 64)
    assert benchmark.attention_shape("B/16", 256, img_size=384) == (256, 12, 576, 64)
    assert benchmark.attention_shape("mu/8", 8, img_size=32) == (8, 2, 16, 16)


def test_mfu_is_one_definition():
    from vit_speedrun.train import report
    assert report.mfu(1000, 27.4e9, 800) == pytest.approx(1000 * 27.4e9 / 800e12)
    peak, source = report.peak_source(torch.device("cpu"), torch.float32, 123.0)
    assert peak == 123.0 and "logging.peak_tflops" in source
    peak, source = report.peak_source(torch.device("cpu"), torch.float32)
    assert peak > 0 and "fp32 512x512 matmul measured" in source


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder, kb = make_photo_folder(tmp_path_factory.mktemp("photos") / "photos", n=24)
    assert 80 < kb < 140, "ImageNet-like bytes per 500x375 photo"
    return folder


def test_trainer_gap_script_runs_its_rows_on_cpu():
    """.ci/trainer_gap.py (README's breakdown of the trainer's step on the H100) runs its
    real path on CPU: DDP over gloo, train_vit's step and wrap_ddp; seven timed rows."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, ".ci/trainer_gap.py", "--variant", "mu/8",
                           "--img-size", "32", "--batch-size", "8", "--steps", "2", "--busy", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = results(proc.stdout)
    assert len(rows) == 7 and "DDP as the trainer wraps it" in rows[4]
    assert all(0 < number(r"([\d.]+) ms", row) < 1e4 for row in rows)


def test_photos_refuses_a_non_empty_folder_unless_overwrite(tmp_path, capsys):
    """A second `photos` into the same folder would mix its images with the first run's."""
    out = tmp_path / "photos"
    benchmark.main(["photos", "--out", str(out), "--n", "3"])
    with pytest.raises(SystemExit, match="is not empty; pass --overwrite"):
        benchmark.main(["photos", "--out", str(out), "--n", "2"])
    assert len(list(out.glob("n*/*.JPEG"))) == 3
    benchmark.main(["photos", "--out", str(out), "--n", "2", "--overwrite"])
    assert len(list(out.glob("n*/*.JPEG"))) == 2
    assert "RESULT photos: 2 JPEGs" in capsys.readouterr().out


def test_photos_interrupted_leaves_nothing_behind(tmp_path, monkeypatch):
    """A run that fails half-way (here: the 3rd photo's save) writes no --out and leaves no
    temporary folder."""
    from PIL import Image
    save, calls = Image.Image.save, []

    def failing_save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        benchmark.main(["photos", "--out", str(tmp_path / "photos"), "--n", "5"])
    assert list(tmp_path.iterdir()) == []


def test_photos_sigterm_leaves_nothing_behind(tmp_path):
    """A real `benchmark.py photos` process stopped by SIGTERM mid-run: exit 143, no --out,
    no temporary folder."""
    import signal
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "benchmark.py", "photos", "--out",
                             str(tmp_path / "photos"), "--n", "2000"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".photos.tmp-*/n*/*.JPEG")) and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_storage_then_loader_on_real_photos(photo_folder, tmp_path, capsys):
    benchmark.main(["storage", "--images", str(photo_folder), "--settings", "original",
                    "--work", str(tmp_path), "--batch-size", "8", "--batches", "2",
                    "--res", "64", "--workers", "2"])
    out = capsys.readouterr().out
    (line,) = results(out)
    assert "original" in line and 80 < number(r"([\d.]+) kB/img", line) < 140  # the files
    assert number(r"normalise, mixup \(CPU\) ([\d,]+)", line) > 0
    beton = tmp_path / "original.beton"
    assert beton.exists()
    import write_ffcv
    other = tmp_path / "raw.beton"
    write_ffcv.convert(photo_folder, other, "val", write_mode="raw", progress=False)
    benchmark.main(["loader", "--beton", str(beton), "--compare", str(other), "--batch-size", "8",
                    "--batches", "2", "--res", "64", "--workers", "2"])
    out = capsys.readouterr().out
    lines = results(out)
    for storage in ("original + index 32 px", "raw"):  # side by side, every stage
        for stage in benchmark.LOADER_KINDS.values():
            (line,) = [x for x in lines if f"{storage} {stage}:" in " ".join(x.split())]
            assert number(r"([\d,]+) img per CPU-second", line) > 0
    assert "RandAugment+mixup cost" in lines[-1]


def test_loader_where_prints_both_paths_host_cost(photo_folder, tmp_path, capsys):
    """`loader --where cpu device`: how many samples each side decodes, both paths' host
    cost per image side by side, and the last line with the ratio (README's figure)."""
    import write_ffcv
    beton = tmp_path / "train.beton"
    write_ffcv.convert(photo_folder, beton, "train", progress=False)
    benchmark.main(["loader", "--beton", str(beton), "--where", "cpu", "device",
                    "--batch-size", "8", "--batches", "2", "--res", "64", "--workers", "2"])
    out = capsys.readouterr().out
    routes = [x for x in results(out) if "the device decodes" in x]
    assert len(routes) == 1 and number(r"decodes (\d+) of", routes[0]) > 400
    last = out.strip().splitlines()[-1]
    cpu, device = (number(r"cpu path ([\d.]+) ms", last),
                   number(r"device path ([\d.]+) ms", last))
    assert last.startswith("host CPU per image: ") and 0 < device < cpu
    assert abs(number(r"\(([\d.]+) x fewer\)", last) - cpu / device) < 0.2


def test_device_command_checks_the_batch_against_the_cpu_twin(photo_folder, tmp_path, capsys):
    """`device` (on the CPU here, on a GPU in gpu_session.sh): a planned batch through the
    device kernels, timed, and compared with the CPU twin's images (exit 1 on a mismatch)."""
    import write_ffcv
    beton = tmp_path / "train.beton"
    write_ffcv.convert(photo_folder, beton, "train", progress=False)
    assert benchmark.main(["device", "--beton", str(beton), "--batch-size", "4", "--res", "32",
                           "--repeats", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "device images equal the CPU twin's: True" in out
    line = results(out)[-1]
    total = number(r"decode \+ augment ([\d.]+) ms per batch", line)
    jpeg = number(r"JPEG stage ([\d.]+) ms", line)
    augment = number(r"augment ([\d.]+) ms;", line)
    assert total > 0 and jpeg > 0 and augment > 0
    assert abs(jpeg + augment - total) <= 0.02 + 0.01 * total   # one repeat: the parts add up


def test_full_runs_train_vit_steps(photo_folder, tmp_path, capsys):
    import write_ffcv
    beton = tmp_path / "train.beton"
    write_ffcv.convert(photo_folder, beton, "val", write_mode="raw", max_resolution=96,
                       progress=False)
    benchmark.main(["full", "--config-file", str(ROOT / "configs" / "vit_s16_90ep.yaml"),
                    "--steps", "6", "--log-every", "2", "--folder", str(tmp_path / "run"),
                    f"--data.train_dataset={beton}", "--model.variant=mu/16",
                    "--model.img_size=64", "--training.batch_size=8", "--training.precision=fp32",
                    "--data.num_workers=2", "--logging.progress=0"])
    out = capsys.readouterr().out
    line = results(out)[-1]
    assert line.startswith("RESULT full") and number(r"([\d,.]+) img/s", line) > 0
    assert "over 2 windows" in line


def test_help_shows_its_examples_and_defaults(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--help"])
    out = capsys.readouterr().out
    # The `full` example is two lines joined by a backslash, as a shell reads it.
    assert ("--steps 100 \\\n      --data.train_dataset=train.beton" in out), out
    with pytest.raises(SystemExit):
        benchmark.main(["step", "--help"])
    out = capsys.readouterr().out
    assert "(default: 224)" in out and "(default: S/16)" in out and "None" not in out
    assert "\x1b" not in out
