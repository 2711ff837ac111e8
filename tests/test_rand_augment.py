"""rand_augment.py, the root script: its picture of the train pipeline follows a config."""
import numpy as np

import rand_augment
from conftest import N, NUM_CLASSES


def test_grid_follows_a_config_and_spans_the_set(beton, tmp_path, capsys):
    """`python rand_augment.py -C config --out grid.png`: the config's train set, image
    size and augmentation settings, samples spread over the whole (class-sorted) set."""
    from PIL import Image
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{train_dataset: {beton}}}\nlogging: {{folder: {tmp_path}}}\n"
                      "model: {img_size: 32, variant: mu/8}\n"
                      "augment: {randaug_magnitude: 3, flip: false, crop_area_min: 0.5}\n")
    settings = rand_augment.grid_settings([str(config)])
    assert settings == dict(beton=str(beton), seed=0, res=32, alpha=0.2, randaug=(2, 3),
                            fixed=False, flip=False, crop_area=(0.5, 1.0))
    out = tmp_path / "grid.png"
    rand_augment.main(["-C", str(config), "--out", str(out), "--n", "8"])
    assert "wrote" in capsys.readouterr().out
    grid = np.asarray(Image.open(out))
    assert grid.shape == (3 * (32 + 12), 8 * 32, 3)
    # the last tile of the first row is the set's last image, cropped as the config says
    from ffcv.loader import Loader, OrderOption
    clock = rand_augment.AugmentClock(0)
    loader = Loader(beton, batch_size=1, num_workers=1, indices=np.array([N - 1]),
                    order=OrderOption.SEQUENTIAL, pipelines=rand_augment.train_pipelines(
                        clock, res=32, randaug=None, flip=False, mixup_alpha=0.0,
                        crop_area=(0.5, 1.0), num_classes=NUM_CLASSES))
    clock.set_epoch(0)
    want = rand_augment._to_uint8(np.asarray(next(iter(loader))[0]))[0]
    assert np.array_equal(grid[12:44, 7 * 32:8 * 32], want)
