"""Damaged and crafted files through every C entry point of vit_speedrun/jpeg (window.c,
scan.c, plan.c), for a library built with AddressSanitizer and UBSan (no recovery).

Why. The other fuzz tests see a crash or a wrong pixel; a read a few bytes past a file, or
an integer overflow that happens to wrap into a refusal, passes them silently and can still
take a loader thread down on another machine or compiler. Here each file sits in a malloc
block of exactly its size, so the sanitizer reports a read one byte past it, and undefined
behaviour aborts. tests/jpeg/test_window_sanitized.py builds the library and runs

  python sanitized_fuzz.py --library LIB --mutants N --seed S   # "fuzzed N files" + counts
  python sanitized_fuzz.py --library LIB --past-the-end         # must be reported

under LD_PRELOAD of libasan and libubsan (Python itself is not instrumented). libjpeg is not
instrumented either: what is checked is our code, and the sizes it hands to libjpeg.
`--seeds DIR` writes the same files as inputs of fuzz_window.c (`make fuzz`).
"""
import argparse
import ctypes
import io
import json
import struct
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]
from vit_speedrun.jpeg import window as jw             # noqa: E402
from vit_speedrun.jpeg.device import record as R       # noqa: E402
from test_window import SAMPLINGS, _encoded, _with_index   # noqa: E402

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
COUNTS = ("files", "no header", "pixels", "refused", "index path", "planned")


class Exact:
    """bytes in a malloc block of exactly their length, as a uint8 array (freed on exit)."""

    def __init__(self, data):
        self.data = bytes(data)

    def __enter__(self):
        self.ptr = libc.malloc(max(len(self.data), 1))
        ctypes.memmove(self.ptr, self.data, len(self.data))
        block = (ctypes.c_uint8 * max(len(self.data), 1)).from_address(self.ptr)
        return np.ctypeslib.as_array(block)[:len(self.data)]

    def __exit__(self, *_):
        libc.free(self.ptr)


def varints(body):
    """[(start, end, value)] of the index body's varints."""
    out, start, value, shift = [], 0, 0, 0
    for i, b in enumerate(body):
        value |= (b & 127) << shift
        shift += 7
        if b < 128:
            out.append((start, i + 1, value))
            start, value, shift = i + 1, 0, 0
    return out


def overflowing_predictor(jpeg, indexed):
    """indexed's body with one DC predictor change replaced by the largest one a varint
    holds in the direction of the running predictor (+-2^63), at the first point where
    that predictor is not 0: predictor + change overflows int64 unless it is refused first."""
    body = indexed[len(jpeg):-16]
    fields = varints(body)
    ns = fields[3][2]
    pred = [0] * ns
    for k, at in enumerate(range(4, len(fields), 1 + ns)):
        for c in range(ns):
            start, end, v = fields[at + 1 + c]
            if k and pred[c]:
                big = 2 ** 64 - 1 if pred[c] < 0 else 2 ** 64 - 2   # zigzag of -2^63, 2^63-1
                var = bytes([big >> (7 * i) & 127 | 128 for i in range(9)]) + b"\x01"
                return _with_index(jpeg, body[:start] + var + body[end:])
            pred[c] += -(v >> 1) - 1 if v & 1 else v >> 1
    raise ValueError("no point with a non-zero predictor")


def decode_all(arr, rng, counts, windows=3):
    """Every entry point on arr: header, fast_path, jpeg_bytes, decode_window (plain and
    index path), the device plan (into an exact-size record, sometimes too small; planned
    only where the index path decodes), and at times index() and restart()."""
    counts["files"] += 1
    jw.fast_path(arr)
    jw.jpeg_bytes(arr)
    for transcode in (jw.index, jw.restart):
        if rng.random() < .3:
            try:
                transcode(arr)
            except ValueError:
                pass
    try:
        h, w = jw.header(arr)
    except ValueError:
        counts["no header"] += 1
        return
    if h * w > 4e6:
        return
    for _ in range(windows):
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        hh, ww = int(rng.integers(1, h - y + 1)), int(rng.integers(1, w - x + 1))
        try:
            jw.decode_window(arr, y, x, hh, ww)
            counts["pixels"] += 1
        except ValueError:
            counts["refused"] += 1
        try:
            indexed = jw.decode_window_indexed(arr, y, x, hh, ww) is not None
            counts["index path"] += indexed
        except ValueError:
            indexed = True   # the index path, whose smaller JPEG libjpeg refused
        cap = R.capacity(h, w, len(arr)) if rng.random() < .8 else 4 * int(rng.integers(0, 2048))
        with Exact(bytes(cap)) as record:
            planned = R.plan(arr, y, x, hh, ww, record) > 0
        counts["planned"] += planned
        # the device plans only windows the CPU's index path takes (jw_index_window's checks)
        assert indexed or not planned, f"planned {(y, x, hh, ww)}, the index path refuses it"


def mutant(rng, forms):
    """One damaged or crafted file from a file's forms (original, indexed, restart)."""
    jpeg, indexed, _ = forms
    kind = int(rng.integers(0, 6))
    if kind == 0 and indexed is not None:   # a lying index that passes its hash
        body = bytearray(indexed[len(jpeg):-16])
        for _ in range(int(rng.integers(1, 5))):
            body[rng.integers(0, len(body))] = rng.integers(0, 256)
        if rng.random() < .2:
            body = body[:rng.integers(0, len(body) + 1)]
        return _with_index(jpeg, body)
    present = [form for form in forms if form is not None]
    src = bytearray(present[rng.integers(0, len(present))])
    sos = src.find(b"\xff\xda")
    if kind in (1, 2):   # bytes set anywhere, or in the headers and the scan's start
        for _ in range(int(rng.integers(1, 5))):
            at = rng.integers(0, len(src) if kind == 2 else min(max(sos + 30, 2), len(src)))
            src[at] = rng.integers(0, 256)
    elif kind == 3:
        src = src[:rng.integers(0, len(src))]
    elif kind == 4:      # bytes inserted or deleted
        at, n = int(rng.integers(0, len(src))), int(rng.integers(1, 20))
        src[at:at] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        if rng.random() < .5:
            del src[at:at + 2 * n]
    else:                # a 16-bit header field (length, size, count) set to an edge value
        at = int(rng.integers(0, max(sos, 2) - 1))
        src[at:at + 2] = struct.pack(">H", int(rng.choice([0, 1, 2, 4, 8, 16, 17, 255, 256,
                                                          65535])))
    return bytes(src)


def corpus():
    """[(original, indexed or None, restart transcode or None)]: the golden TF files
    (baseline, progressive, restart markers) and small files of every chroma layout."""
    import skimage.data
    from PIL import Image
    z = np.load(HERE.parent / "data" / "tf_decode.npz")
    files = [z[f"data_{i}"].tobytes()
             for i in range(len(json.loads(bytes(z["index_json"]).decode())))]
    for sampling in [*SAMPLINGS, "gray", "optimized", "progressive"]:
        for hw in [(17, 40), (40, 7), (1, 1), (33, 50)]:
            files.append(_encoded(skimage.data.chelsea(), sampling, *hw))
    for adobe in (True, False):   # CMYK, converted by window.c with and without the marker
        cmyk = io.BytesIO()
        Image.fromarray(skimage.data.chelsea()[:24, :40]).convert("CMYK").save(cmyk, "JPEG")
        data = cmyk.getvalue()
        files.append(data if adobe else data.replace(b"\xff\xeeAdobe", b"\xff\xeeAdobf"))
    out = []
    for f in files:
        try:
            restarted = jw.restart(f)
        except ValueError:
            restarted = None
        out.append((f, jw.index(f), restarted))
    return out


def past_the_end(library):
    """Read one byte past an exact-size block in the library's code (jw_fnv)."""
    fnv = ctypes.CDLL(str(library)).jw_fnv
    fnv.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    with Exact(b"0123456789abc") as arr:
        print("in bounds", fnv(arr.ctypes.data, 13), flush=True)
        print("past the end", fnv(arr.ctypes.data, 14), flush=True)


def fuzz(mutants, seed):
    """The undamaged files, the overflowing predictor change, then `mutants` damaged files:
    prints the counts of what each path did."""
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(COUNTS, 0)
    files = corpus()
    small = [forms for forms in files if len(forms[0]) < 20000]
    for forms in files:
        for form in forms:
            if form is not None:
                with Exact(form) as arr:
                    decode_all(arr, rng, counts)
    for jpeg, indexed, _ in files:
        if indexed is not None:
            with Exact(overflowing_predictor(jpeg, indexed)) as arr:   # refused: plain path
                h, w = jw.header(arr)
                box = (h - 1, w - 1, 1, 1)   # the index is walked to its last point
                assert jw.decode_window_indexed(arr, *box) is None
                assert (jw.decode_window(arr, *box) == jw.decode_window(jpeg, *box)).all()
                with Exact(bytes(R.capacity(h, w, len(arr)))) as record:
                    assert R.plan(arr, *box, record) == R.PLAN_CPU
                decode_all(arr, rng, counts)
    for i in range(mutants):            # mostly small files: many more mutants per second
        pool = files if i % 10 == 0 else small
        with Exact(mutant(rng, pool[rng.integers(0, len(pool))])) as arr:
            decode_all(arr, rng, counts, windows=2)
    print(f"fuzzed {counts['files']} files:", json.dumps(counts), flush=True)


def write_seeds(folder, seed=0):
    """fuzz_window.c's inputs: 9 control bytes, then each form of each corpus file and
    the overflowing predictor change."""
    rng, folder = np.random.default_rng(seed), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = corpus()
    forms = [f for fs in files for f in fs if f is not None and len(f) < 60000]
    for k, form in enumerate(forms):
        for copy in range(2):
            control = rng.integers(0, 256, 9, dtype=np.uint8).tobytes()
            (folder / f"seed{k:03d}_{copy}").write_bytes(control + form)
    overflows = [overflowing_predictor(j, ix) for j, ix, _ in files if ix is not None]
    for k, data in enumerate(overflows):   # window: the last pixel (the index walked whole)
        h, w = jw.header(data)
        control = struct.pack("<4HB", h - 1, w - 1, 0, 0, 0)
        (folder / f"overflow{k:03d}").write_bytes(control + data)
    print(f"wrote {2 * len(forms) + len(overflows)} seeds to {folder}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", type=Path, help="the sanitized libjpeg_window.so")
    parser.add_argument("--mutants", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--past-the-end", action="store_true")
    parser.add_argument("--seeds", type=Path, help="write fuzz_window.c inputs here, only")
    args = parser.parse_args()
    if args.seeds:
        return write_seeds(args.seeds)
    if not args.library:
        parser.error("--library is required (a libjpeg_window.so built with the sanitizers)")
    library = args.library
    jw.ensure_built = lambda: library   # window.py and record.py bind through it
    past_the_end(library) if args.past_the_end else fuzz(args.mutants, args.seed)


if __name__ == "__main__":
    main()
