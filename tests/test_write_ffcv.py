"""write_ffcv.py end to end: ImageFolder trees built from real photographs plus ImageNet's
quirks (grayscale, CMYK, PNG named .JPEG, a 4096x3072 image, .DS_Store, a text file),
converted with ffcv's real writer and read back from the file or with its Loader. The
default storage keeps each JPEG's bytes; the raw/jpg/proportion options are tested with a
48x64 resolution cap. The trees are tiny so the whole file runs in well under a minute."""
import hashlib
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from vit_speedrun.jpeg import window as jpeg_window
import write_ffcv
from write_ffcv import REAL_MAX, ConversionError, convert, minival_mask, read_sidecar

ROOT = Path(__file__).resolve().parents[1]
H, W = 48, 64                     # every test image, so SimpleRGBImageDecoder can batch them
WNIDS = ['n01440764', 'n01443537', 'n01484850', 'n01491361']
OPTS = dict(progress=False, num_workers=2)          # the default storage: original bytes
CAPPED = dict(OPTS, max_resolution=W)               # for the raw/jpg/proportion options


def crop(photos, k):
    """The k-th distinct 48x64 crop of the real photographs (varied photo, offset, flip)."""
    names = sorted(photos)
    img = photos[names[k % len(names)]]
    h, w = img.shape[:2]
    s = 0.5 + 0.1 * (k // len(names) % 5)
    ch, cw = int(h * s), int(w * s)
    y, x = (k * 37) % (h - ch + 1), (k * 53) % (w - cw + 1)
    out = img[y:y + ch, x:x + cw]
    out = out[:, ::-1] if k // 40 % 2 else out
    return np.asarray(Image.fromarray(np.ascontiguousarray(out)).resize((W, H), Image.BICUBIC))


def decoded(path):
    """The pixels of a source file as the reference decodes it: TF's JPEG decode (libjpeg
    IFAST, tests/jpeg/test_window.py), PIL's RGB conversion for anything else."""
    data = Path(path).read_bytes()
    if data[:2] == b'\xff\xd8':
        return jpeg_window.decode(data)
    return np.asarray(Image.open(path).convert('RGB'))


def key(img):
    return hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()


def metadata(beton, field):
    """One field's per-sample metadata as ffcv's Reader sees it (fields are unnamed there)."""
    from ffcv.reader import Reader
    reader = Reader(str(beton))
    assert reader.field_names[:2] == ['image', 'label']
    return reader.metadata[f'f{reader.field_names.index(field)}']


def stored(beton):
    """(labels, modes, payloads) straight from the file: a JPEG's bytes (mode 0) or the raw
    HxWx3 pixels (mode 1) of each sample, in file order."""
    image, data = metadata(beton, 'image'), np.fromfile(beton, np.uint8)
    sizes = {int(r['ptr']): int(r['size']) for r in _alloc(beton)}
    out = []
    for m in image:
        start, h, w = int(m['data_ptr']), int(m['height']), int(m['width'])
        if m['mode'] == 1:
            out.append(data[start:start + h * w * 3].reshape(h, w, 3))
        else:
            out.append(data[start:start + sizes[start]])
    return metadata(beton, 'label').astype(int), image['mode'], out


def _alloc(beton):
    from ffcv.reader import Reader
    return Reader(str(beton)).alloc_table


def stored_raw(beton):
    """(labels, images) read straight from the file for raw-mode betons: the stored bytes."""
    image, data = metadata(beton, 'image'), np.fromfile(beton, np.uint8)
    assert (image['mode'] == 1).all()
    images = [data[m['data_ptr']:m['data_ptr'] + m['height'] * m['width'] * 3]
              .reshape(m['height'], m['width'], 3) for m in image]
    return metadata(beton, 'label').astype(int), images


def load_all(beton, real=False):
    """Every sample through ffcv's Loader, in file order."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.ndarray import NDArrayDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    pipes = {'image': [SimpleRGBImageDecoder()], 'label': [IntDecoder()]}
    if real:
        pipes['real'] = [NDArrayDecoder()]
    loader = Loader(str(beton), batch_size=16, num_workers=2, order=OrderOption.SEQUENTIAL,
                    drop_last=False, pipelines=pipes)
    batches = [[np.array(x) for x in b] for b in loader]  # copy: ffcv reuses its buffers
    return [np.concatenate(parts) for parts in zip(*batches)]


@pytest.fixture(scope='module')
def data(photos, tmp_path_factory):
    """train/ (4 classes x 7 incl. quirks), val/ (12 images + real.json), v2/ (0..3)."""
    root = tmp_path_factory.mktemp('imagenet')
    k, expected = 0, {}                       # expected[path] = pixels the beton must hold
    for c, wnid in enumerate(WNIDS):
        folder = root / 'train' / wnid
        folder.mkdir(parents=True)
        for j in range(6):
            Image.fromarray(crop(photos, k)).save(folder / f'{wnid}_{j}.JPEG', quality=95)
            k += 1
    train = root / 'train'
    big = Image.fromarray(crop(photos, 100)).resize((64 * W, 64 * H), Image.BICUBIC)
    big.save(train / WNIDS[0] / 'large.JPEG', quality=90)        # 4096x3072
    Image.fromarray(crop(photos, 101)).convert('L').save(train / WNIDS[1] / 'gray.JPEG')
    Image.fromarray(crop(photos, 102)).convert('CMYK').save(train / WNIDS[2] / 'cmyk.JPEG')
    Image.fromarray(crop(photos, 103)).save(train / WNIDS[3] / 'png.JPEG', format='PNG')
    (train / '.DS_Store').write_bytes(b'\0\0\0\1Bud1')
    (train / WNIDS[0] / '.DS_Store').write_bytes(b'\0\0\0\1Bud1')
    (train / WNIDS[1] / 'notes.txt').write_text('not an image')
    for path in sorted(train.glob('*/*.JPEG')):
        expected[path] = decoded(path)
    expected[train / WNIDS[0] / 'large.JPEG'] = cv2.resize(
        decoded(train / WNIDS[0] / 'large.JPEG'), (W, H), interpolation=cv2.INTER_AREA)

    # val: file numbers shuffled across class folders, so file-name order != folder order
    numbers, real, val_label = np.random.default_rng(0).permutation(12) + 1, [], {}
    for i, n in enumerate(numbers):
        path = root / 'val' / WNIDS[i % 4] / f'ILSVRC2012_val_{n:08d}.JPEG'
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop(photos, 200 + i)).save(path, quality=95)
        expected[path], val_label[path.name] = decoded(path), i % 4
    for n in range(1, 13):                    # one set per image, in file-name order
        lab = val_label[f'ILSVRC2012_val_{n:08d}.JPEG']
        real.append([] if n % 4 == 0 else [lab] if n % 4 == 1 else [lab, (lab + n) % 4])
    (root / 'real.json').write_text(json.dumps(real))

    for c in range(4):
        folder = root / 'v2' / str(c)
        folder.mkdir(parents=True)
        for j in range(2):
            Image.fromarray(crop(photos, 300 + 2 * c + j)).save(folder / f'{j}.jpeg')
            expected[folder / f'{j}.jpeg'] = decoded(folder / f'{j}.jpeg')
    assert len({key(v) for v in expected.values()}) == len(expected), 'test images must differ'
    return root, expected, real


@pytest.fixture(scope='module')
def betons(data, tmp_path_factory):
    root, _, _ = data
    out = tmp_path_factory.mktemp('betons')
    convert(root / 'train', out / 'original.beton', 'train', chunk_size=4, **OPTS)
    convert(root / 'train', out / 'restart.beton', 'train', write_mode='restart', chunk_size=4,
            **OPTS)
    convert(root / 'train', out / 'bare.beton', 'train', window_index=0, chunk_size=4, **OPTS)
    convert(root / 'train', out / 'train.beton', 'train', write_mode='proportion',
            compress_probability=0.5, jpeg_quality=95, chunk_size=4, **CAPPED)
    convert(root / 'train', out / 'train_1w.beton', 'train', write_mode='proportion',
            compress_probability=0.5, jpeg_quality=95, **dict(CAPPED, num_workers=1))
    convert(root / 'train', out / 'minival.beton', 'minival', write_mode='raw', **CAPPED)
    convert(root / 'train', out / 'minival_1w.beton', 'minival', write_mode='raw',
            **dict(CAPPED, num_workers=1, chunk_size=1))
    convert(root / 'val', out / 'val.beton', 'val', real_labels=root / 'real.json',
            write_mode='jpg', jpeg_quality=90, **CAPPED)
    convert(root / 'v2', out / 'v2.beton', 'v2', classes_from=out / 'train.beton', **OPTS)
    return out


def test_sidecars(betons):
    from ffcv.reader import Reader
    for split, n, has_real in [('train', 24, False), ('minival', 4, False),
                               ('val', 12, True), ('v2', 8, False)]:
        meta = read_sidecar(betons / f'{split}.beton')
        assert meta['classes'] == WNIDS, split       # v2 copied them from train
        assert (meta['split'], meta['num_images'], meta['has_real']) == (split, n, has_real)
        assert Reader(str(betons / f'{split}.beton')).num_samples == n
        assert meta['skipped'] == []
    assert read_sidecar(betons / 'val.beton.json')['settings']['write_mode'] == 'jpg'
    assert read_sidecar(betons / 'minival.beton')['settings']['write_mode'] == 'raw'
    for name, faithful in (('original', True), ('restart', True), ('v2', True),
                           ('train', False), ('val', False)):
        meta = read_sidecar(betons / f'{name}.beton')
        assert meta['faithful'] is faithful, name
        assert (meta['settings']['max_resolution'] is None) is faithful, name
    assert not list(betons.glob('*tmp*'))


def test_original_storage_keeps_each_jpeg_byte_for_byte(data, betons):
    """The default: RGB and grayscale JPEGs (the 4096x3072 one too: no resolution cap)
    stored as their own bytes, in train followed by their window index; the CMYK JPEG and
    the PNG converted to RGB pixels (TF's decode rules) and listed in the sidecar."""
    root, expected, _ = data
    sources = sorted((root / 'train').glob('*/*.JPEG'))
    files = {Path(p).read_bytes(): p for p in sources}
    labels, modes, payloads = stored(betons / 'original.beton')
    assert len(payloads) == 24 and labels.tolist() == sorted(labels.tolist())
    meta = read_sidecar(betons / 'original.beton')
    assert meta['settings']['window_index'] == 32 and meta['unindexed'] == 0
    converted = meta['converted']
    shapes = metadata(betons / 'original.beton', 'image')[['height', 'width']].tolist()
    seen = set()
    for mode, payload, shape in zip(modes, payloads, shapes):
        if mode == 0:
            assert jpeg_window.fast_path(payload) == 'index'
            path = files[jpeg_window.jpeg_bytes(payload)]  # KeyError: not a file's own bytes
            assert path.name not in ('cmyk.JPEG', 'png.JPEG')
            assert shape == decoded(path).shape[:2]   # the 4096x3072 one at full size
        else:
            path = next(p for p in sources if np.array_equal(decoded(p), payload))
            assert converted[str(path)] == 'raw'
        seen.add(path)
    held = {p for p in sources if p not in seen}       # the minival images
    assert len(held) == 4 and all(str(p) not in converted for p in held)
    assert {Path(p).name for p in converted} == {'cmyk.JPEG', 'png.JPEG'} - {p.name for p in held}


def test_restart_storage_has_the_same_pixels_and_crops(data, betons):
    """write_mode=restart: each JPEG stored as its lossless restart transcode (every file's
    full decode equals the original's), the converted files as in original storage; through
    a real Loader the same train crops, pixel for pixel, as the original bytes with their
    window index (the default) and without it (window_index=0)."""
    from vit_speedrun.pp import ffcv_ops as ra
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    meta = read_sidecar(betons / 'restart.beton')
    assert meta['faithful'] is True and meta['restart_kept_original'] == 0
    assert meta['converted'] == read_sidecar(betons / 'original.beton')['converted']
    _, modes, fast = stored(betons / 'restart.beton')
    _, modes0, slow = stored(betons / 'original.beton')
    assert modes.tolist() == modes0.tolist() and (modes == 0).sum() >= 20
    for mode, a, b in zip(modes, fast, slow):
        if mode == 0:
            assert jpeg_window.fast_path(a) == 'restart' and jpeg_window.fast_path(b) == 'index'
            assert np.array_equal(jpeg_window.decode(a), jpeg_window.decode(b))
        else:
            assert np.array_equal(a, b)
    batches = {}
    bare = read_sidecar(betons / 'bare.beton')
    assert bare['settings']['window_index'] == 0 and 'unindexed' not in bare
    _, modes_bare, payloads_bare = stored(betons / 'bare.beton')
    assert all(jpeg_window.fast_path(p) == 'plain' for m, p in zip(modes_bare, payloads_bare)
               if m == 0)
    for name in ('restart', 'original', 'bare'):
        clock = ra.AugmentClock(7)
        loader = Loader(str(betons / f'{name}.beton'), batch_size=24, num_workers=2,
                        order=OrderOption.SEQUENTIAL, drop_last=False,
                        pipelines={'image': [ra.InceptionCropDecoder(clock, 40)],
                                   'label': [IntDecoder()]})
        batches[name] = []
        for epoch in range(3):
            clock.set_epoch(epoch)
            batches[name] += [np.array(b[0]) for b in loader]
    assert np.array_equal(np.concatenate(batches['restart']),
                          np.concatenate(batches['original']))
    assert np.array_equal(np.concatenate(batches['bare']), np.concatenate(batches['original']))


def test_original_storage_rejects_a_resolution_cap(photos, tmp_path):
    with pytest.raises(ConversionError, match='write_mode=original stores the files at full'):
        convert(small_tree(photos, tmp_path / 'in'), tmp_path / 'x.beton', 'val', **CAPPED)


@pytest.fixture(scope='module')
def train_and_minival(data, betons):
    """{split: [(source path, stored image, label)]}: train through the Loader, each image
    matched to its source (bit-exact when stored raw, nearest within JPEG error else)."""
    root, expected, _ = data
    sources = [p for p in expected if p.parent.parent == root / 'train']
    by_key = {key(expected[p]): p for p in sources}
    images, labels = load_all(betons / 'train.beton')
    modes = metadata(betons / 'train.beton', 'image')['mode']
    assert 4 < (modes == 0).sum() < 20, 'proportion mode should JPEG-encode about half'
    train = []
    for img, lab, mode in zip(images, labels.ravel(), modes):
        if mode == 1:
            path = by_key[key(img)]
        else:
            errs = {p: np.abs(img.astype(int) - expected[p]).mean() for p in sources}
            path = min(errs, key=errs.get)
            assert errs[path] < 4, (path, errs[path])
        train.append((path, img, lab))
    labels, images = stored_raw(betons / 'minival.beton')
    minival = [(by_key[key(img)], img, lab) for img, lab in zip(images, labels)]
    return {'train': train, 'minival': minival, 'sources': sources}


def test_train_and_minival_labels_disjoint_cover(train_and_minival, betons):
    train, minival = train_and_minival['train'], train_and_minival['minival']
    assert [lab for _, _, lab in train] == list(np.repeat(np.arange(4), 6))
    assert [lab for _, _, lab in minival] == [0, 1, 2, 3]         # one per class here
    for path, img, lab in train + minival:
        assert path.parent.name == WNIDS[lab] and img.shape == (H, W, 3)
    train_paths, held = {p for p, _, _ in train}, {p for p, _, _ in minival}
    assert len(train_paths) == 24 and not train_paths & held
    assert train_paths | held == set(train_and_minival['sources'])  # the whole folder
    labels_1w, images_1w = stored_raw(betons / 'minival_1w.beton')  # 1 worker, chunks of 1
    assert [key(x) for x in images_1w] == [key(x) for _, x, _ in minival]
    # proportion mode's JPEG-or-raw coin is seeded per image, not per worker process
    assert np.array_equal(metadata(betons / 'train.beton', 'image')['mode'],
                          metadata(betons / 'train_1w.beton', 'image')['mode'])


def test_quirks_stored_as_rgb(data, train_and_minival, photos):
    root, expected, _ = data
    stored = {p.name: img.astype(int) for p, img, _ in
              train_and_minival['train'] + train_and_minival['minival']}
    for name in ('large.JPEG', 'gray.JPEG', 'cmyk.JPEG', 'png.JPEG'):
        want = expected[next(p for p in expected if p.name == name)]
        assert np.abs(stored[name] - want).mean() < 4, name
    assert np.abs(stored['gray.JPEG'][..., 0] - stored['gray.JPEG'][..., 2]).max() <= 3
    # ... and the references are the right pictures: colours not inverted, the large image
    # area-downscaled to the stored resolution, the PNG really a PNG
    train = root / 'train'
    assert Image.open(train / WNIDS[2] / 'cmyk.JPEG').mode == 'CMYK'
    assert np.abs(stored['cmyk.JPEG'] - crop(photos, 102)).mean() < 8
    assert Image.open(train / WNIDS[3] / 'png.JPEG').format == 'PNG'
    assert Image.open(train / WNIDS[0] / 'large.JPEG').size == (64 * W, 64 * H)
    assert np.abs(stored['large.JPEG'] - crop(photos, 100)).mean() < 8


def test_minival_mask_counts_and_determinism():
    rng = np.random.default_rng(1)
    counts = rng.integers(700, 1301, size=50)
    labels = np.repeat(np.arange(50), counts)
    paths = [Path(f'n{c:08d}') / f'{i}.JPEG' for c, n in enumerate(counts) for i in range(n)]
    mask = minival_mask(paths, labels, 0.01, seed=0)
    assert mask.sum() == len(labels) - round(len(labels) * 0.99)   # TFDS's train[:99%]
    per_class = np.bincount(labels[mask], minlength=50)
    assert per_class.min() >= 7 and (np.abs(per_class - 0.01 * counts) < 1).all()
    assert np.array_equal(mask, minival_mask(paths, labels, 0.01, seed=0))
    assert not np.array_equal(mask, minival_mask(paths, labels, 0.01, seed=1))
    tiny = minival_mask(paths[:3] + paths[counts[0]:counts[0] + 2],
                        np.array([0, 0, 0, 1, 1]), 0.01, seed=0)
    assert tiny.sum() == 2                                        # at least one per class


def test_val_real_labels_round_trip(data, betons):
    root, expected, real = data
    images, labels, sets = load_all(betons / 'val.beton', real=True)
    assert sets.shape == (12, REAL_MAX) and sets.dtype == np.int16
    files = sorted((root / 'val').glob('*/*.JPEG'))               # folder order = beton order
    for img, lab, row, path in zip(images, labels.ravel(), sets, files):
        assert lab == WNIDS.index(path.parent.name)
        want = real[int(path.stem.split('_')[-1]) - 1]
        assert list(row[row >= 0]) == want and (row[len(want):] == -1).all()
        assert np.abs(img.astype(int) - expected[path]).mean() < 6   # JPEG 90 round trip


def test_v2_labels_are_folder_indices(data, betons):
    root, expected, _ = data
    images, labels = load_all(betons / 'v2.beton')
    assert np.array_equal(labels.ravel(), [0, 0, 1, 1, 2, 2, 3, 3])
    for img, path in zip(images, sorted((root / 'v2').glob('*/*.jpeg'))):
        assert np.array_equal(img, expected[path])                # raw: exact


def test_v2_without_class_list_sorts_numerically(photos, tmp_path):
    for c in ('0', '2', '10'):
        (tmp_path / 'v2' / c).mkdir(parents=True)
        Image.fromarray(crop(photos, int(c))).save(tmp_path / 'v2' / c / 'a.jpeg')
    meta = convert(tmp_path / 'v2', tmp_path / 'v2.beton', 'v2', **OPTS)
    assert meta['classes'] == [str(i) for i in range(11)]
    assert np.array_equal(stored(tmp_path / 'v2.beton')[0], [0, 2, 10])


def small_tree(photos, root, per_class=2):
    for c in range(2):
        (root / WNIDS[c]).mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(crop(photos, 10 * c + j)).save(root / WNIDS[c] / f'{c}{j}.JPEG')
    return root


def test_restart_keeps_the_original_bytes_where_the_transcode_differs(photos, tmp_path,
                                                                      monkeypatch):
    """The per-file check of write_mode=restart: a transcode whose decode differs (here a
    transcode of another image) or that fails is not stored; the file's own bytes are, and
    the sidecar counts them."""
    tree = small_tree(photos, tmp_path / 'in')
    files = sorted(tree.glob('*/*.JPEG'))
    other = jpeg_window.restart(files[0].read_bytes())
    def flawed(data):
        if bytes(data) == files[1].read_bytes():
            raise ValueError('jpeg_window: transcoding with restart markers: test')
        return other
    monkeypatch.setattr(jpeg_window, 'restart', flawed)
    out = tmp_path / 'out' / 'val.beton'
    meta = convert(tree, out, 'val', write_mode='restart', **OPTS)
    assert meta['restart_kept_original'] == len(files) - 1 and meta['faithful'] is True
    _, modes, payloads = stored(out)
    assert (modes == 0).all()
    for path, payload in zip(files, payloads):
        if path == files[0]:
            assert payload.tobytes() == other     # its own transcode: the same pixels
        else:
            assert payload.tobytes() == path.read_bytes()


def test_undecodable_fails_cleanly_or_is_skipped(photos, tmp_path):
    tree = small_tree(photos, tmp_path / 'in')
    (tree / WNIDS[0] / 'garbage.JPEG').write_bytes(b'<html>not a jpeg</html>')
    good = tree / WNIDS[1] / '10.JPEG'
    (tree / WNIDS[1] / 'truncated.JPEG').write_bytes(good.read_bytes()[:300])
    out = tmp_path / 'out' / 'val.beton'
    with pytest.raises(ConversionError, match=r'cannot decode 2 file') as err:
        convert(tree, out, 'val', **OPTS)
    # one pass names every bad file, each with libjpeg's or PIL's reason
    assert 'garbage.JPEG' in str(err.value) and 'truncated.JPEG' in str(err.value)
    assert 'skip_bad=1' in str(err.value)
    assert re.search(r'truncated\.JPEG: \w+Error: \w', str(err.value))
    assert not list(out.parent.iterdir())                 # nothing left, not even temp files
    meta = convert(tree, out, 'val', skip_bad=True, **OPTS)
    assert meta['num_images'] == 4 and sorted(Path(p).name for p in meta['skipped']) == [
        'garbage.JPEG', 'truncated.JPEG']
    assert read_sidecar(out)['skipped'] == meta['skipped']
    assert np.array_equal(stored(out)[0], [0, 0, 1, 1])
    assert sorted(p.name for p in out.parent.iterdir()) == ['val.beton', 'val.beton.json']


@pytest.mark.parametrize('lost, sigint', [(0, 'default'), (1, 'default'), (0, 'ignored')])
def test_crashed_writer_process_is_an_error_not_a_hang(photos, tmp_path, monkeypatch, lost,
                                                       sigint):
    """A non-image makes the field's encode raise inside a forked writer process; the
    watchdog interrupts ffcv's endless wait, again if the first interrupt was lost (one
    that lands while a finaliser runs is swallowed), and whatever SIGINT does (ignored in a
    background job: a CI run launched with `&` hung here)."""
    monkeypatch.setattr(write_ffcv, 'load_original', lambda path, **settings: 'not an image')
    calls, interrupt = [], write_ffcv._thread.interrupt_main
    def lossy(*signum):
        calls.append(1)
        if len(calls) > lost:
            interrupt(*signum)
    monkeypatch.setattr(write_ffcv._thread, 'interrupt_main', lossy)
    before = signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == 'ignored'
                           else signal.default_int_handler)
    out = tmp_path / 'out' / 'val.beton'
    try:
        with pytest.raises(ConversionError, match='writer process died'):
            convert(small_tree(photos, tmp_path / 'in'), out, 'val', **OPTS)
    finally:
        signal.signal(signal.SIGINT, before)
    assert not list(out.parent.iterdir())
    assert all(p.exitcode is not None for p in write_ffcv.WriterProcess.started)
    assert len(calls) == lost + 1
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL   # put back


def test_existing_output_needs_overwrite(photos, tmp_path):
    tree = small_tree(photos, tmp_path / 'in')
    out = tmp_path / 'val.beton'
    out.write_bytes(b'precious')
    with pytest.raises(ConversionError, match='overwrite=1'):
        convert(tree, out, 'val', **OPTS)
    assert out.read_bytes() == b'precious'
    convert(tree, out, 'val', overwrite=True, **OPTS)
    assert read_sidecar(out)['num_images'] == 4


@pytest.mark.parametrize('case', ['missing', 'empty', 'flat', 'empty_class', 'v2_names',
                                  'one_image_class', 'real_length', 'real_too_long',
                                  'real_dup_names', 'real_not_val', 'no_sidecar'])
def test_bad_input_errors_name_the_problem(case, photos, tmp_path):
    tree = small_tree(photos, tmp_path / 'in')
    split, extra, match = 'val', {}, None
    if case == 'missing':
        tree, match = tmp_path / 'nope', 'nope: no such directory'
    elif case == 'empty':
        tree, match = tmp_path / 'empty', 'empty: no class folders'
        tree.mkdir()
    elif case == 'flat':
        tree, match = tree / WNIDS[0], 'no class folders'
    elif case == 'empty_class':
        (tree / 'n09999999').mkdir()
        (tree / 'n09999999' / '.DS_Store').write_bytes(b'x')
        match = 'n09999999: class folder holds no images'
    elif case == 'v2_names':
        split, match = 'v2', f'{WNIDS[0]}: ImageNet-v2 class folders'
    elif case == 'one_image_class':
        (tree / WNIDS[1] / '11.JPEG').unlink()
        split, match = 'train', f'{WNIDS[1]}: 1 image.*at least 2'
    elif case in ('real_length', 'real_too_long'):
        sets = [[0]] * 3 if case == 'real_length' else [[0]] * 3 + [[1] * (REAL_MAX + 1)]
        (tmp_path / 'real.json').write_text(json.dumps(sets))
        extra = {'real_labels': tmp_path / 'real.json'}
        match = 'real.json: 3 label sets for 4 images' if case == 'real_length' else 'REAL_MAX'
    elif case == 'real_dup_names':
        (tree / WNIDS[1] / '10.JPEG').rename(tree / WNIDS[1] / '00.JPEG')
        (tmp_path / 'real.json').write_text(json.dumps([[0]] * 4))
        extra, match = {'real_labels': tmp_path / 'real.json'}, 'two images named 00.JPEG'
    elif case == 'real_not_val':
        split, extra, match = 'train', {'real_labels': 'real.json'}, 'split=val only'
    elif case == 'no_sidecar':
        extra = {'classes_from': tmp_path / 'train.beton'}
        match = 'train.beton.json: sidecar'
    out = tmp_path / 'out' / 'x.beton'
    with pytest.raises(ConversionError, match=match):
        convert(tree, out, split, **OPTS, **extra)
    assert not out.parent.exists() or not list(out.parent.iterdir())


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / 'write_ffcv.py'), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_help_names_every_option():
    result = run_cli('--help')
    assert result.returncode == 0 and '\x1b' not in result.stdout and '(0' not in result.stdout
    assert '--cfg.write_mode=None' not in result.stdout or 'original' in result.stdout
    for name in write_ffcv.DEFAULTS.keys() | {'data_dir', 'write_path', 'split',
                                                       'real_labels', 'classes_from', 'seed',
                                                       'skip_bad', 'overwrite', 'num_workers'}:
        assert f'cfg.{name}' in result.stdout, name


def test_import_declares_no_options():
    """Importers (train_vit.py reads sidecars) must not inherit the required cfg.* options
    in fastargs' global config: only running write_ffcv.py declares them."""
    code = ("import write_ffcv; from fastargs import get_current_config; "
            "print(sorted(get_current_config().entries))")
    out = subprocess.run([sys.executable, '-c', code], cwd=write_ffcv.__file__.rsplit('/', 1)[0],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]'


def test_cli_converts_and_reports(data, betons, tmp_path):
    root, _, _ = data
    out = tmp_path / 'minival.beton'
    result = run_cli(f'--cfg.data_dir={root / "train"}', f'--cfg.write_path={out}',
                     '--cfg.split=minival', f'--cfg.max_resolution={W}', '--cfg.write_mode=raw',
                     '--cfg.num_workers=1')
    assert result.returncode == 0, result.stderr
    assert 'minival: wrote 4 images' in result.stdout and 'img/s' in result.stderr
    assert 'ignored 2 non-image files' in result.stdout        # .DS_Store and notes.txt
    assert [key(x) for x in stored_raw(out)[1]] == [key(x) for x in
                                                      stored_raw(betons / 'minival.beton')[1]]
    result = run_cli('--cfg.data_dir=/nonexistent', f'--cfg.write_path={tmp_path / "v.beton"}',
                     '--cfg.split=val')
    assert result.returncode != 0 and '/nonexistent: no such directory' in result.stderr
    result = run_cli('--cfg.data_dir=x', '--cfg.write_path=y', '--cfg.split=test')
    assert result.returncode == 2 and "cfg.split: got 'test'" in result.stderr
    result = run_cli('--cfg.splt=val')
    assert result.returncode == 2 and 'did you mean --cfg.split?' in result.stderr


def test_sigterm_leaves_no_temporary_and_stale_ones_are_cleaned(photos, tmp_path):
    """A real write_ffcv.py process killed by SIGTERM mid-write removes its temporary
    file; a temporary left by a SIGKILLed run is removed (and said so) by the next run; one
    of a running process is an error."""
    import os
    import signal
    import time
    tree = small_tree(photos, tmp_path / 'in', per_class=300)
    out = tmp_path / 'out' / 'val.beton'
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, str(ROOT / 'write_ffcv.py'), f'--cfg.data_dir={tree}',
                             f'--cfg.write_path={out}', '--cfg.split=val', '--cfg.num_workers=2'],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(out.parent.glob('val.beton.tmp-*')) and time.time() < deadline:
        time.sleep(0.05)
    assert list(out.parent.glob('val.beton.tmp-*')), 'the writer never started'
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and 'SIGTERM; removed' in stderr, stderr
    assert 'nothing was written' in stderr and not list(out.parent.iterdir())
    (out.parent / 'val.beton.tmp-999999999').write_bytes(b'x' * 1000)   # a dead pid's
    (out.parent / 'val.beton.tmp-999999999.json').write_text('{}')
    result = run_cli(f'--cfg.data_dir={small_tree(photos, tmp_path / "small")}',
                     f'--cfg.write_path={out}', '--cfg.split=val', '--cfg.num_workers=1')
    assert result.returncode == 0 and 'left by an interrupted conversion' in result.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ['val.beton', 'val.beton.json']
    (out.parent / f'val.beton.tmp-{os.getppid()}').write_bytes(b'x')    # a live process's
    with pytest.raises(ConversionError, match=f'pid {os.getppid()}'):
        write_ffcv._claim_output(out)


def test_window_index_settings_and_unindexed_files(photos, tmp_path):
    """A progressive JPEG cannot be indexed: stored as its bare bytes and counted in the
    sidecar; the others carry their index. Bad settings fail before any work."""
    tree = small_tree(photos, tmp_path / 'in')
    progressive = sorted(tree.glob('*/*.JPEG'))[0]
    Image.fromarray(crop(photos, 77)).save(progressive, quality=90, progressive=True)
    out = tmp_path / 'out' / 'val.beton'
    meta = convert(tree, out, 'val', window_index=64, **OPTS)
    assert meta['settings']['window_index'] == 64 and meta['unindexed'] == 1
    paths = {p.read_bytes(): p for p in tree.glob('*/*.JPEG')}
    for mode, payload in zip(*stored(out)[1:]):
        assert mode == 0
        path = paths[jpeg_window.jpeg_bytes(payload)]
        assert jpeg_window.fast_path(payload) == ('plain' if path == progressive else 'index')
    with pytest.raises(ConversionError, match='multiple of 32'):
        convert(tree, tmp_path / 'x.beton', 'val', window_index=48, **OPTS)
    with pytest.raises(ConversionError, match='write_mode=original only'):
        convert(tree, tmp_path / 'x.beton', 'val', window_index=32, write_mode='raw')
    assert not (tmp_path / 'x.beton').exists()


def test_console_line_counts_converted_and_unindexed_files(photos, tmp_path, capsys):
    """The console says what only the sidecar listed before: files converted to pixels (a
    PNG named .JPEG) and JPEGs stored without their window index (a progressive one)."""
    folder = tmp_path / 'train' / WNIDS[0]
    folder.mkdir(parents=True)
    for j in range(3):
        Image.fromarray(crop(photos, j)).save(folder / f'{j}.JPEG', quality=90)
    Image.fromarray(crop(photos, 5)).save(folder / 'png.JPEG', format='PNG')
    Image.fromarray(crop(photos, 6)).save(folder / 'prog.JPEG', quality=90, progressive=True)
    convert(tmp_path / 'train', tmp_path / 'out.beton', 'val', window_index=32, progress=False)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith('val: wrote 5 images'), line
    assert 'converted 1 non-JPEG or CMYK file(s) to RGB' in line, line
    assert 'stored 1 JPEG(s) without a window index' in line, line


def test_kaggle_flat_val_converts_with_its_label_csv(data, tmp_path):
    """Kaggle's layout: val/ holds the images themselves and LOC_val_solution.csv their
    wnids; --cfg.val_labels converts it to the same beton as the class-folder layout (same
    labels, same order, same bytes), ReaL labels included."""
    root, _, _ = data
    flat = tmp_path / 'val'
    flat.mkdir()
    rows = ['ImageId,PredictionString']
    for path in sorted((root / 'val').glob('*/*.JPEG')):
        (flat / path.name).write_bytes(path.read_bytes())
        rows.append(f'{path.stem},{path.parent.name} 12 34 56 78 {path.parent.name} 1 2 3 4')
    (tmp_path / 'LOC_val_solution.csv').write_text('\n'.join(rows) + '\n')
    out = tmp_path / 'kaggle.beton'
    meta = convert(flat, out, 'val', val_labels=tmp_path / 'LOC_val_solution.csv',
                   real_labels=root / 'real.json', progress=False)
    folders = tmp_path / 'folders.beton'
    want = convert(root / 'val', folders, 'val', real_labels=root / 'real.json', progress=False)
    assert meta['classes'] == want['classes'] and meta['num_images'] == want['num_images'] == 12
    got_labels, _, got_payloads = stored(out)
    want_labels, _, want_payloads = stored(folders)
    assert got_labels.tolist() == want_labels.tolist()
    assert all(np.array_equal(a, b) for a, b in zip(got_payloads, want_payloads))
    assert np.array_equal(load_all(out, real=True)[2], load_all(folders, real=True)[2])
    with pytest.raises(ConversionError, match='header must be'):
        (tmp_path / 'bad.csv').write_text('id,label\n')
        convert(flat, tmp_path / 'x.beton', 'val', val_labels=tmp_path / 'bad.csv',
                progress=False)
