"""Convert an ImageNet-style folder into an FFCV .beton plus a JSON sidecar.

One run writes one split. Labels are the index of the class folder in sorted wnid order
(v2: the folder name itself), identical in every split; the class list, split and storage
settings go to `<write_path>.json`, which the trainer reads to check that its train and
eval sets agree.

  python write_ffcv.py --cfg.data_dir=IN/train --cfg.write_path=OUT/train.beton --cfg.split=train
  python write_ffcv.py --cfg.data_dir=IN/train --cfg.write_path=OUT/minival.beton \\
      --cfg.split=minival
  python write_ffcv.py --cfg.data_dir=IN/val --cfg.write_path=OUT/val.beton --cfg.split=val \\
      --cfg.real_labels=real.json
  python write_ffcv.py --cfg.data_dir=V2 --cfg.write_path=OUT/v2.beton --cfg.split=v2 \\
      --cfg.classes_from=OUT/train.beton

Storage (--cfg.write_mode). The default, `original`, is what the reference trains on (TFDS
imagenet2012): every RGB or grayscale JPEG's own bytes, unchanged, at full resolution, so the
loader decodes exactly what TF decodes (jpeg/window.py: only the crop window, libjpeg IFAST).
In the train split each JPEG's bytes are followed by a window index (--cfg.window_index,
after the JPEG's end, where every decoder stops; jpeg_window.index): every 32 pixels of each
MCU row, where that MCU's bits start and the DC predictors there, so that a crop's decode
skips the entropy decoding of the rows above the window and of the columns beside it (1.7x
faster, ~2% more bytes, the same pixels). Every index point is checked against the file's
full decode while writing; a file that cannot be indexed (progressive, restart markers) or
fails the check is stored bare (counted in the sidecar's `unindexed`).
The rest (CMYK JPEGs, and PNG or other files named .JPEG; TFDS converted those 23 ImageNet
files to RGB too) are converted to RGB pixels (CMYK with TF's own rule) and stored raw; each
is listed in the sidecar's `converted`. Every JPEG is fully decoded once while writing, so a
corrupt file fails here, not in the middle of training.
`raw`, `jpg` and `proportion` (and `max_resolution`) are speed/size options that change
the pixels the model sees: raw stores TF-decoded pixels (no decode cost, no cropped-decode
edge columns), jpg/proportion re-encode them. The sidecar records the storage; train_vit.py
warns when a set is not stored `original` or `restart`.
`restart` (off by default) is the speed option that keeps the pixels: each JPEG losslessly
transcoded (the same DCT coefficients, quantisation and sampling; optimised Huffman tables)
with a restart marker after every MCU, so that the loader entropy-decodes only the crop
window's MCUs instead of every row above it (jpeg/window.c). Every file's full decode is
compared with the original's while writing; a file whose pixels would differ keeps its
original bytes (counted in the sidecar). EXIF orientation is ignored as in TF's decoder,
and hidden or non-image files are skipped. Nothing appears at write_path unless the
conversion finished.
"""
import _thread
import hashlib
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
from fastargs import Param, Section
from fastargs.validation import And, InRange, OneOf
from PIL import Image

from vit_speedrun.data.betons import ConversionError, check_beton, read_sidecar  # noqa: F401
from vit_speedrun.data.images import IMAGE_SUFFIXES, JPEG_SOI, image_names, load_rgb

REAL_MAX = 16          # longest ReaL label set we store ('real' field, padded with -1)
SPLITS = ('train', 'minival', 'val', 'v2')
# Storage defaults, every split: the reference's own bytes (see the module docstring);
# jpeg_quality and compress_probability only matter for the jpg/proportion options.
DEFAULTS = dict(max_resolution=None, write_mode='original', jpeg_quality=95,
                compress_probability=0.5, chunk_size=100, window_index=None)
INDEX_SPAN = 32   # window_index in the train split unless given (README: speed against size)
BYTE_MODES = ('original', 'restart')   # the JPEG's own bytes (or its lossless transcode)
CONVERTED_RAW, CONVERTED_JPEG = 1, 2   # ImageSet.converted codes (0: stored as given)

def declare_options():
    """The `cfg` section. Declared on demand, not at import: fastargs' config is global, so
    an importer (train_vit.py reads sidecars) would otherwise inherit these required
    options in its own --help and validation."""
    Section('cfg', 'write_ffcv.py: an ImageNet-style folder to an FFCV .beton').params(
        data_dir=Param(str, 'split folder laid out as <class>/<image> (v2: folders 0..999)',
                       required=True),
        write_path=Param(str, 'the .beton to write; the sidecar goes to <write_path>.json',
                         required=True),
        split=Param(And(str, OneOf(SPLITS)), 'train = 99% of every class of data_dir, minival ='
                    ' the held-out rest, val = every image, v2 = ImageNet-v2 layout',
                    required=True),
        real_labels=Param(str, 'val only: ReaL real.json, stored as field "real"', default=''),
        val_labels=Param(str, 'val only: a CSV of ImageId -> wnid (Kaggle\'s '
                         'LOC_val_solution.csv) for a flat folder of ILSVRC2012_val_*.JPEG; '
                         'each image\'s class is the first wnid of its PredictionString',
                         default=''),
        classes_from=Param(str, 'a .beton (or its .json) whose class list to use; for v2 this'
                           ' gives wnids instead of "0".."999"', default=''),
        max_resolution=Param(And(int, InRange(16, 65535)), 'raw/jpg/proportion only: longest '
                             'side stored, larger images area-downscaled; None = no cap',
                             default=None),
        write_mode=Param(And(str, OneOf(['original', 'restart', 'raw', 'jpg', 'proportion'])),
                         "original = each JPEG's own bytes (the reference's input; default); "
                         'restart = their lossless transcode with a restart marker per MCU '
                         '(same pixels, faster crop decode); raw pixels, JPEG re-encode, or '
                         'JPEG with compress_probability are speed/size options that change '
                         'the pixels',
                         default=DEFAULTS['write_mode']),
        window_index=Param(And(int, InRange(0, 65504)), 'original storage: a window index '
                           "point every N pixels of each MCU row, after each JPEG's own bytes "
                           '(the same pixels, crops decode 1.7x faster, ~2 percent more bytes);'
                           ' 0 = the bare bytes. Default: 32 for train, 0 for the eval splits, '
                           'which are decoded whole', default=DEFAULTS['window_index']),
        jpeg_quality=Param(And(int, InRange(1, 100)), 'jpg/proportion: JPEG quality',
                           default=DEFAULTS['jpeg_quality']),
        compress_probability=Param(And(float, InRange(0, 1)), 'share of JPEG images in'
                                   ' proportion mode', default=DEFAULTS['compress_probability']),
        num_workers=Param(And(int, InRange(0, 1024)), 'writer processes, 0 = all cores',
                          default=0),
        chunk_size=Param(And(int, InRange(1, 100000)), 'images per work item',
                         default=DEFAULTS['chunk_size']),
        minival_fraction=Param(And(float, InRange(0, 0.5)), 'share of each class held out as'
                               ' minival', default=0.01),
        seed=Param(int, 'seed of the minival draw and of the proportion-mode coin', default=0),
        skip_bad=Param(And(int, OneOf([0, 1])), '1: skip undecodable files and list them'
                       ' (costs a second pass) instead of failing', default=0),
        overwrite=Param(And(int, OneOf([0, 1])), '1: replace an existing write_path', default=0),
    )


def with_index(data, pixels, span):
    """data followed by its window index (jpeg_window.index, a point every `span` pixels),
    or None when it cannot be indexed, or an index point fails the check against the full
    decode `pixels`. Strips `span` pixels wide and the image's height, decoded through the
    index, tile the width, so that every point starts or ends one of them (compared less
    each strip's edge columns, which TF's cropped decode upsamples as image edges). An
    image one strip wide has a point per MCU row only: bands 8 rows high check those (a
    band that leaves nothing out is served by the plain path, and so is any window that
    would use the points only it covers); None if no band uses the index at all."""
    from vit_speedrun.jpeg import window as jpeg_window
    indexed = jpeg_window.index(data, span)
    if indexed is None:
        return None
    height, width = pixels.shape[:2]
    strips = width > span
    windows = ([(0, x, height, min(span, width - x)) for x in range(0, width, span)] if strips
               else [(y, 0, min(8, height - y), width) for y in range(0, height, 8)])
    used = 0
    for y, x, h, w in windows:
        got = jpeg_window.decode_window_indexed(indexed, y, x, h, w)
        if got is None and strips:
            return None
        if got is None:
            continue
        want = pixels[y:y + h, x:x + w]
        if strips:   # a strip's edge columns are TF's crop edges
            got, want = got[:, 1:-1], want[:, 1:-1]
        if not np.array_equal(got, want):
            return None
        used += 1
    return np.frombuffer(indexed, np.uint8) if used else None


def load_original(path, restart=False, index_span=0):
    """What write_mode=original stores for one file: (bytes, height, width) of an RGB or
    grayscale JPEG, kept byte for byte after one full decode has proven it sound; the
    RGB pixels (load_rgb) of anything else (CMYK JPEGs, PNG, ...). index_span > 0: the bytes
    followed by their window index (with_index); restart=True (write_mode=restart): the
    JPEG's restart transcode instead when its full decode equals the original's; both with
    a fourth item, False, when the bare bytes had to be stored."""
    from vit_speedrun.jpeg import window as jpeg_window
    data = np.fromfile(path, np.uint8)
    if data[:2].tobytes() == JPEG_SOI:
        with Image.open(path) as image:
            mode = image.mode
        if mode in ('RGB', 'L'):
            pixels = jpeg_window.decode(data)   # raises on a corrupt or truncated file
            if index_span:
                indexed = with_index(data, pixels, index_span)
                return (data if indexed is None else indexed, *pixels.shape[:2],
                        indexed is not None)
            if not restart:
                return data, pixels.shape[0], pixels.shape[1]
            try:
                fast = np.frombuffer(jpeg_window.restart(data), np.uint8)
                same = np.array_equal(jpeg_window.decode(fast), pixels)
            except ValueError:
                same = False
            return (fast if same else data), pixels.shape[0], pixels.shape[1], same
    return load_rgb(path)


def _encode_stored(destination, image, malloc):
    """RGBImageField.encode for write_mode=original: (jpeg bytes, h, w) -> mode jpg with
    the bytes unchanged; uint8 HxWx3 pixels -> mode raw."""
    from ffcv.fields.rgb_image import IMAGE_MODES
    if isinstance(image, tuple):
        data, height, width = image[:3]
        destination['mode'] = IMAGE_MODES['jpg']
    else:
        data, (height, width) = np.ascontiguousarray(image).reshape(-1), image.shape[:2]
        destination['mode'] = IMAGE_MODES['raw']
    destination['height'], destination['width'] = height, width
    destination['data_ptr'], storage = malloc(data.nbytes)
    storage[:] = data


def image_field(opts):
    """The 'image' field: ffcv's RGBImageField (so that any ffcv reader reads the file), its
    encode replaced by _encode_stored for write_mode=original and restart."""
    from ffcv.fields import RGBImageField
    if opts['write_mode'] not in BYTE_MODES:
        return RGBImageField(write_mode=opts['write_mode'], max_resolution=opts['max_resolution'],
                             jpeg_quality=opts['jpeg_quality'],
                             compress_probability=opts['compress_probability'])
    field = RGBImageField(write_mode='raw')
    field.encode = _encode_stored  # an instance attribute: ffcv keys the type on the class
    return field


def page_size(paths, opts):
    """ffcv's page size: every stored image must fit in one page. original: the largest
    file (converted files that would not fit raw are stored as JPEG 95 instead; restart
    adds a few bytes per MCU, the window index a few per cent); else the raw size of a
    max_resolution image (default cap: 8 MiB pages)."""
    if opts['write_mode'] in BYTE_MODES:
        need = max(os.stat(p).st_size for p in paths)
        need += need // 8 + 65536
    else:
        need = (opts['max_resolution'] or 1024) ** 2 * 3
    return max(1 << 23, 1 << math.ceil(math.log2(need + 1)))


def scan(data_dir, split, classes=None):
    """(paths, labels, classes, n_ignored) in ImageFolder order: by label, then file name."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ConversionError(f'{root}: no such directory. Set --cfg.data_dir to a split folder '
                              f'laid out as <class>/<image>, e.g. .../imagenet/train.')
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith('.'))
    if not folders:
        raise ConversionError(f'{root}: no class folders. data_dir must hold one folder per '
                              f'class (<class>/<image>), not the images themselves.')
    if split == 'v2':
        if not all(f.isdigit() for f in folders):
            bad = next(f for f in folders if not f.isdigit())
            raise ConversionError(f'{root / bad}: ImageNet-v2 class folders are named by class '
                                  f'index 0..999. Use another split for wnid folders.')
        label_of = {f: int(f) for f in folders}
        classes = classes or [str(i) for i in range(max(label_of.values()) + 1)]
        if max(label_of.values()) >= len(classes):
            raise ConversionError(f'{root}: folder {max(label_of.values())} but the class list '
                                  f'from classes_from has only {len(classes)} classes.')
    else:
        classes = classes or folders
        index = {c: i for i, c in enumerate(classes)}
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise ConversionError(f'{root / unknown[0]}: class not in the classes_from list; '
                                  f'pass the train .beton converted from the same ImageNet.')
        label_of = {f: index[f] for f in folders}
    paths, labels, ignored = [], [], 0
    for folder in sorted(folders, key=label_of.get):
        names, others = image_names(root / folder)
        images = [root / folder / f for f in names]
        if not images:
            raise ConversionError(f'{root / folder}: class folder holds no images '
                                  f'({"/".join(sorted(IMAGE_SUFFIXES))}). Restore its images '
                                  f'or remove the folder.')
        ignored += others
        paths += images
        labels += [label_of[folder]] * len(images)
    return paths, np.array(labels, np.int64), list(classes), ignored


def scan_flat(data_dir, labels_csv, classes=None):
    """scan() for Kaggle's layout of val: the images in one folder, their classes in a CSV
    (ImageId,PredictionString with the wnid first: LOC_val_solution.csv). Same order as
    scan(): by label, then file name."""
    import csv
    root, table = Path(data_dir), Path(labels_csv)
    if not root.is_dir():
        raise ConversionError(f'{root}: no such directory. Set --cfg.data_dir to the folder '
                              f'of ILSVRC2012_val_*.JPEG files.')
    try:
        with open(table, newline='') as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise ConversionError(f'{table}: cannot read the val labels ({e.strerror}). Pass '
                              f'Kaggle\'s LOC_val_solution.csv as --cfg.val_labels.') from None
    if not rows or rows[0][:2] != ['ImageId', 'PredictionString']:
        raise ConversionError(f'{table}: not a label CSV: its header must be '
                              f'"ImageId,PredictionString" (Kaggle\'s LOC_val_solution.csv).')
    wnid_of = {r[0]: r[1].split()[0] for r in rows[1:] if len(r) >= 2 and r[1].split()}
    images, others = image_names(root)
    wnids = {f: wnid_of.get(os.path.splitext(f)[0]) for f in images}   # None: not in the CSV
    missing = [f for f in images if wnids[f] is None]
    if missing or not images:
        raise ConversionError(f'{root}: {len(missing)} of {len(images)} images have no row in '
                              f'{table} (first: {missing[:3]}); data_dir and the CSV must '
                              f'be the same val set.' if images else
                              f'{root}: no images. data_dir must hold the val images.')
    classes = classes or sorted(set(wnids.values()))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(wnids.values()) - set(index))
    if unknown:
        raise ConversionError(f'{table}: class {unknown[0]} is not in the classes_from list; '
                              f'pass the train .beton converted from the same ImageNet.')
    labelled = sorted((index[wnids[f]], f) for f in images)
    return ([root / f for _, f in labelled], np.array([k for k, _ in labelled], np.int64),
            list(classes), others)


def minival_mask(paths, labels, fraction, seed):
    """True for the minival images: a seeded, deterministic share of every class.

    The total is len - round(len * (1 - fraction)) (TFDS's train[:99%] count: 12,812 of
    1,281,167), spread over classes by largest remainder, at least one per class; inside a
    class the images with the smallest sha1(seed/class/name) are held out. A pure function
    of the file list, so the worker count cannot change it."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = fraction * counts
    take = np.maximum(1, np.floor(quota)).astype(int)
    extra = len(labels) - round(len(labels) * (1 - fraction)) - take.sum()
    for c in np.argsort(-(quota - np.floor(quota)), kind='stable')[:max(0, extra)]:
        take[c] += 1
    mask = np.zeros(len(labels), bool)
    for c, k, n in zip(classes, take, counts):
        if k >= n:
            folder = paths[np.flatnonzero(labels == c)[0]].parent
            raise ConversionError(f'{folder}: {n} image(s) cannot be split into train and '
                                  f'minival; a class needs at least 2.')
        members = np.flatnonzero(labels == c)
        key = [hashlib.sha1(f'{seed}/{paths[i].parent.name}/{paths[i].name}'.encode()).digest()
               for i in members]
        mask[members[np.argsort(key, kind='stable')[:k]]] = True
    return mask


def real_sets(real_path, paths, num_classes):
    """ReaL label sets as int16 [N, REAL_MAX] padded with -1; real.json lists one set per
    val image in file-name order, whatever class folder the image sits in."""
    try:
        real = json.loads(Path(real_path).read_text())
    except (OSError, ValueError) as err:
        raise ConversionError(f'{real_path}: cannot read ReaL labels ({err}). Pass real.json '
                              f'from github.com/google-research/reassessed-imagenet.') from None
    names = sorted(p.name for p in paths)
    if len(set(names)) != len(names):
        dup = next(a for a, b in zip(names, names[1:]) if a == b)
        raise ConversionError(f'{paths[0].parent.parent}: two images named {dup}; ReaL labels '
                              f'follow val file names, which must be unique.')
    if not isinstance(real, list) or len(real) != len(paths):
        count = len(real) if isinstance(real, list) else 'no list of'
        raise ConversionError(f'{real_path}: {count} label sets for {len(paths)} images in '
                              f'{paths[0].parent.parent}. real.json has one set per ImageNet val '
                              f'image: convert the complete val folder with it.')
    position = {name: i for i, name in enumerate(names)}
    out = np.full((len(paths), REAL_MAX), -1, np.int16)
    for i, path in enumerate(paths):
        labels = real[position[path.name]]
        if len(labels) > REAL_MAX or any(not 0 <= int(x) < num_classes for x in labels):
            raise ConversionError(f'{real_path}: set {labels} for {path.name} is longer than '
                                  f'REAL_MAX={REAL_MAX} or has labels outside 0..{num_classes-1}.')
        out[i, :len(labels)] = labels
    return out


class ImageSet:
    """The indexable dataset ffcv's writer reads in its worker processes.

    It never raises: ffcv's writer waits forever for a worker that died. A file that cannot
    be decoded becomes a 1x1 placeholder and is flagged in shared memory, and the pass goes
    on, so that one run names every bad file.
    Seeding numpy per item makes ffcv's proportion-mode coin a function of (seed, index).
    Paths sit in one bytes array, not a list of objects, so that forked workers touching
    them do not copy the parent's pages through reference counting."""

    def __init__(self, paths, labels, reals, seed, original=False, page=1 << 23, restart=False,
                 index_span=0):
        self.paths = np.array([os.fsencode(p) for p in paths])
        self.labels, self.reals = labels, reals
        self.seed, self.original, self.page, self.restart = seed, original, page, restart
        self.index_span = index_span
        self.bad = mp.RawArray('b', len(paths))
        self.converted = mp.RawArray('b', len(paths))
        self.kept_original = mp.RawArray('b', len(paths))  # stored bare: no transcode/index

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        np.random.seed([self.seed, i])
        image = np.zeros((1, 1, 3), np.uint8)
        try:
            path = os.fsdecode(self.paths[i])
            image = (load_original(path, restart=self.restart, index_span=self.index_span)
                     if self.original else load_rgb(path))
            if (self.restart or self.index_span) and isinstance(image, tuple):
                self.kept_original[i] = not image[3]
            if self.original and not isinstance(image, tuple):
                self.converted[i] = CONVERTED_RAW
                if image.nbytes > self.page:  # too big for a page raw: as TFDS did
                    import cv2
                    data = cv2.imencode('.jpg', image[..., ::-1],
                                        [cv2.IMWRITE_JPEG_QUALITY, 95])[1].reshape(-1)
                    image = (data, image.shape[0], image.shape[1])
                    self.converted[i] = CONVERTED_JPEG
        except Exception:
            self.bad[i] = 1
        sample = (image, self.labels[i])
        return sample if self.reals is None else sample + (self.reals[i],)


class WriterProcess(mp.Process):
    """ffcv's writer process, recorded: ffcv waits forever for a worker that died (a full
    disk, a crash in encode), so write_beton's watchdog interrupts the wait instead."""
    started = []

    forking = sigterm_pending = False
    writers = []   # the DatasetWriter in use (for _on_sigterm)

    def start(self):
        WriterProcess.started.append(self)
        WriterProcess.forking = True   # a SIGTERM now waits: this child has no pid yet
        try:
            super().start()
        finally:
            WriterProcess.forking = False
        if WriterProcess.sigterm_pending:
            _on_sigterm(WriterProcess.sigterm_pending, None)

    def run(self):
        # a SIGTERM to the whole process group: the parent cleans up and stops the workers
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        super().run()


MAX_LISTED = 50   # undecodable files named in one error message
_WRITING = []     # the temporary files of the conversion in progress (for _on_sigterm)


def _quietly(fn, *args):
    try:
        fn(*args)
    except OSError:  # the process has already ended (or was reaped)
        pass


def _on_sigterm(signum, frame):
    """SIGTERM or Ctrl-C: stop the writer processes, remove the temporary files, exit
    128 + signum. Done here rather than by raising: an exception raised from a signal
    handler can land in a finaliser, where Python ignores it, and the run would go on.
    During a fork it waits for the child's pid (WriterProcess.start calls it again)."""
    if WriterProcess.forking:
        WriterProcess.sigterm_pending = signum
        return
    try:
        children = [p.pid for p in WriterProcess.started]
        for pid in children:
            _quietly(os.kill, pid, signal.SIGKILL)
        for pid in children:
            _quietly(os.waitpid, pid, 0)
        for path in _WRITING:
            Path(path).unlink(missing_ok=True)
        for writer in WriterProcess.writers:  # its shared memory, or Python warns of a leak
            if hasattr(writer, 'metadata_sm'):
                _quietly(writer.metadata_sm.unlink)
        print(f'write_ffcv.py: {signal.Signals(signum).name}; removed {", ".join(map(str, _WRITING)) or "nothing"}'
              f' (nothing was written)', file=sys.stderr, flush=True)
    finally:
        os._exit(128 + signum)


def _why_bad(path, write_mode):
    """'path: why' for a file a writer process could not store."""
    try:
        load_original(path) if write_mode in BYTE_MODES else load_rgb(path)
        return f'{path}: failed in the writer process'
    except Exception as err:
        return f'{path}: {type(err).__name__}: {err}'


def _claim_output(out):
    """The temporary name this process writes `out` to. Temporaries of `out` left by a
    killed run (write_ffcv.py was SIGKILLed, or the machine went down) are removed, and
    said so; one of a process that is still running is an error."""
    for stale in out.parent.glob(f'{out.name}.tmp-*'):
        pid = stale.name.rsplit('.tmp-', 1)[1].split('.')[0]
        if pid.isdigit() and int(pid) != os.getpid() and Path(f'/proc/{pid}').exists():
            raise ConversionError(f'{stale}: another write_ffcv.py (pid {pid}) is writing '
                                  f'{out} now. Wait for it or stop it first.')
        print(f'removing {stale} ({stale.stat().st_size / 1e6:.1f} MB), left by an '
              f'interrupted conversion', file=sys.stderr)
        stale.unlink(missing_ok=True)
    return out.with_name(f'{out.name}.tmp-{os.getpid()}')


class _WriterDied(Exception):
    """Raised in the main thread by write_beton's watchdog (through SIGUSR1, which nothing
    else here uses: SIGINT may be ignored, as in a background job, or be write_ffcv's own
    cleanup handler)."""


def write_beton(path, images, fields, num_workers, chunk_size, progress):
    """Run ffcv's DatasetWriter; returns the indices of undecodable images."""
    import ffcv.writer  # imported here: ffcv compiles numba code at import (~6 s)
    from tqdm import tqdm
    writer = ffcv.writer.DatasetWriter(str(path), fields, page_size=images.page,
                                       num_workers=num_workers)
    WriterProcess.writers[:] = [writer]
    done, crashed, caught, WriterProcess.started = threading.Event(), [], [], []
    in_main = threading.current_thread() is threading.main_thread()

    def wake(signum, frame):
        if crashed and not caught:
            raise _WriterDied

    def watchdog():
        while not done.wait(0.2):
            if any(p.exitcode not in (None, 0) for p in WriterProcess.started):
                crashed.append(True)
                break
        # again each second until the main thread has it: an exception raised while a
        # finaliser runs is swallowed, and ffcv would wait forever
        while crashed and not caught and not done.is_set():
            _thread.interrupt_main(signal.SIGUSR1 if in_main else signal.SIGINT)
            done.wait(1.0)
    # ffcv draws its own progress bar and starts its own processes: name the bar's unit and
    # record the processes, for this call only
    patched = dict(tqdm=partial(tqdm, unit='img', disable=not progress), Process=WriterProcess)
    saved = {name: getattr(ffcv.writer, name) for name in patched}
    vars(ffcv.writer).update(patched)
    previous = signal.signal(signal.SIGUSR1, wake) if in_main else None
    threading.Thread(target=watchdog, daemon=True).start()
    try:
        writer.from_indexed_dataset(images, chunksize=chunk_size)
    except (KeyboardInterrupt, _WriterDied):
        caught.append(True)
        for p in WriterProcess.started:
            p.terminate()
            p.join()
        if hasattr(writer, 'metadata_sm'):
            writer.metadata_sm.close()
            writer.metadata_sm.unlink()
        if crashed:
            raise ConversionError(f'a writer process died while writing {path} (traceback '
                                  f'above; a full disk is the usual cause).') from None
        raise
    finally:
        done.set()
        vars(ffcv.writer).update(saved)
        if in_main:
            signal.signal(signal.SIGUSR1, previous)
    return np.flatnonzero(np.frombuffer(images.bad, np.int8))


def convert(data_dir, write_path, split, *, real_labels='', classes_from='', val_labels='',
            max_resolution=None,
            write_mode=None, jpeg_quality=None, compress_probability=None, num_workers=0,
            chunk_size=None, window_index=None, minival_fraction=0.01, seed=0, skip_bad=False,
            overwrite=False, progress=True):
    """Write `split` of `data_dir` to `write_path` (+ sidecar); returns the sidecar dict.
    Storage options left None take their DEFAULTS."""
    if split not in SPLITS:
        raise ConversionError(f'split={split!r}: choose one of {", ".join(SPLITS)}.')
    if real_labels and split != 'val':
        raise ConversionError(f'real_labels={real_labels}: ReaL labels exist for split=val only.')
    if val_labels and split != 'val':
        raise ConversionError(f'val_labels={val_labels}: a flat folder with a label CSV is '
                              f'the val split\'s layout (Kaggle); use split=val.')
    given = dict(max_resolution=max_resolution, write_mode=write_mode, jpeg_quality=jpeg_quality,
                 compress_probability=compress_probability, chunk_size=chunk_size,
                 window_index=window_index)
    opts = {k: DEFAULTS[k] if v is None else v for k, v in given.items()}
    if opts['write_mode'] != 'original' and opts['window_index']:
        raise ConversionError(f'window_index={window_index}: the window index is stored with '
                              f'write_mode=original only; drop it or use that mode.')
    if opts['window_index'] and opts['window_index'] % 32:
        raise ConversionError(f'window_index={window_index}: choose a multiple of 32 (the '
                              f'widest MCU), so that index points fall on MCU boundaries.')
    if opts['window_index'] is None:  # the eval splits are decoded whole: no use for it
        train = split == 'train' and opts['write_mode'] == 'original'
        opts['window_index'] = INDEX_SPAN if train else 0
    if opts['write_mode'] in BYTE_MODES and opts['max_resolution'] is not None:
        raise ConversionError(f'max_resolution={max_resolution}: write_mode='
                              f'{opts["write_mode"]} stores the files at full size; a '
                              f'resolution cap needs write_mode raw, jpg or proportion.')
    out = Path(write_path)
    if out.exists() and not overwrite:
        raise ConversionError(f'{out} exists. Pass --cfg.overwrite=1 (overwrite=True) to '
                              f'replace it, or choose another write_path.')
    classes = read_sidecar(classes_from)['classes'] if classes_from else None
    paths, labels, classes, ignored = (scan_flat(data_dir, val_labels, classes) if val_labels
                                       else scan(data_dir, split, classes))
    reals = real_sets(real_labels, paths, len(classes)) if real_labels else None
    if split in ('train', 'minival'):
        keep = minival_mask(paths, labels, minival_fraction, seed) == (split == 'minival')
        paths, labels = [p for p, k in zip(paths, keep) if k], labels[keep]
    from ffcv.fields import IntField, NDArrayField  # slow import, see above
    from vit_speedrun.jpeg import window as jpeg_window  # noqa: F401  (built here once, not in every writer process)
    fields = {'image': image_field(opts), 'label': IntField()}
    if reals is not None:
        fields['real'] = NDArrayField(dtype=np.dtype('int16'), shape=(REAL_MAX,))
    workers = num_workers or len(os.sched_getaffinity(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _claim_output(out)
    _WRITING[:] = [tmp, Path(f'{tmp}.json')]
    start, skipped = time.time(), []
    try:
        while True:  # a second pass only when skip_bad found undecodable files
            images = ImageSet(paths, labels, reals, seed, opts['write_mode'] in BYTE_MODES,
                              page_size(paths, opts), opts['write_mode'] == 'restart',
                              opts['window_index'])
            bad = write_beton(tmp, images, fields, workers, opts['chunk_size'], progress)
            if len(bad) == 0:
                break
            reasons = [_why_bad(paths[i], opts['write_mode']) for i in bad[:MAX_LISTED]]
            listing = '\n  '.join(reasons) + (f'\n  ... and {len(bad) - MAX_LISTED} more'
                                               if len(bad) > MAX_LISTED else '')
            if not skip_bad or skipped:
                raise ConversionError(
                    f'cannot decode {len(bad)} file(s):\n  {listing}\nReplace or delete them, '
                    f'or pass --cfg.skip_bad=1 to skip them.')
            print(f'skipping {len(bad)} undecodable file(s), writing again without them:\n  '
                  + listing, file=sys.stderr)
            skipped = [str(paths[i]) for i in bad]
            keep = np.ones(len(paths), bool)
            keep[bad] = False
            paths, labels = [p for p, k in zip(paths, keep) if k], labels[keep]
            reals = None if reals is None else reals[keep]
            if not paths:
                raise ConversionError(f'{data_dir}: no decodable images left.')
        converted = np.frombuffer(images.converted, np.int8)
        meta = {'classes': classes, 'split': split, 'num_images': len(paths),
                'has_real': reals is not None, 'skipped': skipped,
                'faithful': opts['write_mode'] in BYTE_MODES and opts['max_resolution'] is None,
                'converted': {str(paths[i]): 'raw' if converted[i] == CONVERTED_RAW else 'jpg95'
                              for i in np.flatnonzero(converted)},
                'settings': dict(opts, data_dir=str(data_dir), real_labels=str(real_labels),
                                 classes_from=str(classes_from), seed=seed,
                                 minival_fraction=minival_fraction)}
        kept = int(np.frombuffer(images.kept_original, np.int8).sum())
        if opts['write_mode'] == 'restart':  # files whose transcode would change pixels
            meta['restart_kept_original'] = kept
        if opts['window_index']:             # JPEGs stored without their index
            meta['unindexed'] = kept
        tmp_json = Path(f'{tmp}.json')
        tmp_json.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_json, f'{out}.json')
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, Path(f'{tmp}.json')):
            leftover.unlink(missing_ok=True)
        _WRITING.clear()
    secs = time.time() - start
    notes = [f'converted {len(meta["converted"])} non-JPEG or CMYK file(s) to RGB '
             f'(listed in {out}.json)'] if meta['converted'] else []
    if meta.get('unindexed'):
        notes.append(f'stored {meta["unindexed"]} JPEG(s) without a window index '
                     f'(progressive or restart markers: their crops decode the plain way)')
    print(f'{split}: wrote {len(paths)} images to {out} ({out.stat().st_size / 1e6:.1f} MB) in '
          f'{secs:.1f} s ({len(paths) / secs:.0f} img/s); skipped {len(skipped)} undecodable, '
          f'ignored {ignored} non-image files' + ''.join(f'; {n}' for n in notes))
    return meta


def main(argv=None):
    from vit_speedrun import cli
    declare_options()
    try:
        config = cli.parse(argv, ('cfg',), __doc__, 'write_ffcv.py')
    except cli.ConfigError as err:
        print(f'write_ffcv.py: {err}', file=sys.stderr)
        sys.exit(2)
    options = {path[-1]: config[path] for path in config.entries if path[0] == 'cfg'}
    print('write_ffcv.py ' + ' '.join(f'--cfg.{k}={v}' for k, v in options.items()
                                      if v not in (None, '')), flush=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigterm)
    try:
        convert(**options)
    except ConversionError as err:
        sys.exit(f'write_ffcv.py: error: {err}')


if __name__ == '__main__':
    main()
