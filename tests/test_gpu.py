"""Checks that only mean something on a CUDA GPU (skipped elsewhere; CI has none). Run on a
GPU box with `python -m pytest -q -s tests/test_gpu.py`; .ci/gpu_session.sh does."""
import numpy as np
import pytest
import torch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def index_beton(tmp_path_factory):
    """A .beton whose label i is its own index: any batch mix-up shows in the labels."""
    from ffcv.fields import IntField
    from ffcv.writer import DatasetWriter
    path = str(tmp_path_factory.mktemp("slots") / "index.beton")
    DatasetWriter(path, {"label": IntField()}, num_workers=1).from_indexed_dataset(
        [(i,) for i in range(512)])
    return path


def _consume(beton, paced, sleep_cycles):
    """Labels of one sequential epoch as a slow GPU consumer sees them: each batch is read
    on the GPU only after a long kernel, as a training step would."""
    import train_vit
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToDevice, ToTensor
    device = torch.device("cuda")
    loader = Loader(beton, batch_size=8, num_workers=2, order=OrderOption.SEQUENTIAL,
                    pipelines={"label": [IntDecoder(), ToTensor(), ToDevice(device, True)]})
    batches = iter(loader)
    if paced:
        batches = train_vit.HostLead(device).paced(batches)
    seen = []
    for (labels,) in batches:
        torch.cuda._sleep(sleep_cycles)      # a slow step queued ahead of the read
        seen.append(labels.view(-1).clone())
    torch.cuda.synchronize()
    return torch.cat(seen).cpu().numpy()


@cuda
def test_host_lead_keeps_ffcv_buffers_intact_behind_a_slow_gpu(index_beton):
    expected = np.arange(512)
    unpaced = _consume(index_beton, paced=False, sleep_cycles=20_000_000)
    paced = _consume(index_beton, paced=True, sleep_cycles=20_000_000)
    wrong = int((unpaced != expected).sum())
    print(f"\nslow GPU (~10 ms per batch): {wrong} of 512 labels wrong without HostLead, "
          f"{int((paced != expected).sum())} with it")
    assert np.array_equal(paced, expected)
