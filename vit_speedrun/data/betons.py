"""What the loaders need to know about a written .beton: its JSON sidecar (the class list,
split and storage settings write_ffcv.py records) and whether the file is whole.

Here, below the entry points, so that the trainer's loaders check a set without importing
the writer.
"""
import json
import os
from pathlib import Path

import numpy as np


class ConversionError(Exception):
    """Bad input or settings; the message names the path and what to do."""


def read_sidecar(beton_path):
    """The sidecar dict of `X.beton` (also accepts the `X.beton.json` path itself)."""
    path = Path(str(beton_path) if str(beton_path).endswith('.json') else f'{beton_path}.json')
    if not path.is_file():
        raise ConversionError(f'{path}: sidecar not found. write_ffcv.py writes it next to '
                              f'every .beton; convert the data again with write_ffcv.py.')
    return json.loads(path.read_text())


def check_beton(path):
    """Check that `path` is a whole .beton before a loader reads it; returns its number of
    samples. FFCV's layout (ffcv/writer.py): header, field descriptors, per-sample metadata,
    pages of data, then the allocation table (sample_id, ptr, size) from
    header['alloc_table_ptr'] to the end of the file; the header is written last. A file cut
    short or never finished fails here, named, instead of as a numpy error or a dead loader
    thread mid-training."""
    from ffcv.types import (ALLOC_TABLE_TYPE, CURRENT_VERSION, FieldDescType, HeaderType,
                            get_handlers, get_metadata_type)
    from ffcv.fields import BytesField, JSONField, NDArrayField, RGBImageField

    size = os.path.getsize(path)
    redo = 'Convert it again with write_ffcv.py (or copy it again, if it was copied).'
    if size < HeaderType.itemsize:
        raise ConversionError(f'{path}: {size} bytes, too short for an FFCV header '
                              f'({HeaderType.itemsize} bytes): empty or cut short. {redo}')
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    if header['version'] != CURRENT_VERSION:
        raise ConversionError(f'{path}: not an FFCV file (format version {header["version"]}, '
                              f'expected {CURRENT_VERSION}), or its conversion never finished. '
                              f'{redo}')
    n, table = int(header['num_samples']), int(header['alloc_table_ptr'])
    fields_end = HeaderType.itemsize + int(header['num_fields']) * FieldDescType.itemsize
    if fields_end > size:
        raise ConversionError(f'{path}: cut short ({size:,} bytes, its header alone needs '
                              f'{fields_end:,}). {redo}')
    fields = np.fromfile(path, dtype=FieldDescType, count=int(header['num_fields']),
                         offset=HeaderType.itemsize)
    try:
        handlers = get_handlers(fields)
        metadata_type = get_metadata_type(handlers)
    except (KeyError, AttributeError, TypeError, ValueError) as e:
        raise ConversionError(f'{path}: unreadable field descriptors ({e}). {redo}') from None
    metadata_end = fields_end + n * metadata_type.itemsize
    entries, rest = divmod(size - table, ALLOC_TABLE_TYPE.itemsize)
    if not metadata_end <= table <= size or rest:
        raise ConversionError(
            f'{path}: cut short or damaged: {size:,} bytes, but its header says that the data '
            f'of its {n:,} samples run to byte {table:,}, followed by an allocation table of '
            f'{ALLOC_TABLE_TYPE.itemsize}-byte entries to the end of the file. {redo}')
    allocs = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, count=entries, offset=table)
    metadata = np.fromfile(path, dtype=metadata_type, count=n, offset=fields_end)
    missing = 0
    for name, handler in zip(metadata_type.names, handlers):  # ints and floats: no pointer
        if isinstance(handler, (RGBImageField, BytesField, JSONField, NDArrayField)):
            m = metadata[name]
            ptrs = (m['data_ptr'] if isinstance(handler, RGBImageField) else
                    m if isinstance(handler, NDArrayField) else m['ptr'])
            missing += int((~np.isin(ptrs, allocs['ptr'])).sum())
    if missing or (allocs['ptr'] + allocs['size'] > table).any() or (allocs['sample_id'] >= n).any():
        raise ConversionError(f'{path}: cut short or damaged: the data of {missing:,} of its '
                              f'{n:,} samples are missing from its allocation table '
                              f'({entries:,} entries, {size:,} bytes). {redo}')
    return n
