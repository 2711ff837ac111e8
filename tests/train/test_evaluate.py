"""train/evaluate.py's ReaL metric; the eval sets and loaders are tested through
train_vit.main in test_train_vit.py and through eval_vit.py in test_eval_vit.py."""
import torch

from vit_speedrun.train import evaluate


def test_real_accuracy_leaves_empty_label_sets_out():
    """Top-1 predictions 1, 2, 3, 0 against the label sets {1, 4}, {0}, {} and {0, 3, 2}:
    right, wrong, left out (no label), right."""
    real = evaluate.ReaLAccuracy()
    real.update(torch.tensor([1, 2, 3, 0]),
                torch.tensor([[1, 4, -1], [0, -1, -1], [-1, -1, -1], [0, 3, 2]], dtype=torch.int16))
    assert (real.correct.item(), real.total.item()) == (2, 3)  # the empty set is left out
