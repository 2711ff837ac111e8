"""TF-exact JPEG decoding of a crop window, callable from numba (jpeg/window.c via ctypes).

Why this exists. big_vision decodes train images with `tf.image.decode_and_crop_jpeg`:
libjpeg-turbo (JDCT_IFAST, fancy upsampling) decodes ONLY the inception-crop window
(`jpeg_crop_scanline` + `jpeg_skip_scanlines`). On colour files with horizontally
subsampled chroma (4:2:0, 4:2:2: most of ImageNet) the window's first column (x on an MCU
boundary) and last column (x + w < W) are upsampled as image edges, so decode-then-slice
differs from it on about half of all crops (RECIPE.md, train step 0). This file
makes the same library calls, so it is exact by construction (tests/jpeg/test_window.py
checks it against tests/data/tf_decode.npz). It is also the speed lever: the rows
below the window are never decoded, and a crop is a third of an image on average.
Two stored forms go further, with the same pixels: only the window's MCUs are
entropy-decoded, copied into a smaller JPEG whose cropped decode is the same. `index(data)`
(write_ffcv's default for the train split) appends a window index after the file's own
bytes: where every 32-pixel group of MCUs starts in the entropy-coded data and the DC
predictors there. `restart(data)` (write_mode=restart) is a lossless transcode with a
restart marker after every MCU.

Numba (as FFCV calls its `imdecode`): the ctypes functions, with the raw addresses of
C-contiguous uint8 arrays,
  decode_window_c(data_ptr, n_bytes, y, x, h, w, out_ptr, out_row_stride) -> int
  header_c(data_ptr, n_bytes, hw_ptr) -> int      # hw: int32[2] <- (height, width)
return 0 on success, ERR_DATA / ERR_WINDOW / ERR_ARGS (< 0) on failure. They are
re-entrant (safe from FFCV's decoder threads). Numba cannot cache (cache=True) a function
that calls them (the address is a dynamic global), as with FFCV's imdecode. Python:
decode, decode_window, header, index, jpeg_bytes, restart, fast_path (ValueError on
failure).

Build. The shared library build/libjpeg_window.so is compiled on first import when it is
missing or older than vit_speedrun/jpeg/window.c (`make install` does the same); `--bundle` copies
the libjpeg it links into build/ (rpath $ORIGIN) so that build/ alone runs on a machine
without libjpeg. CLI: `python -m vit_speedrun.jpeg.window --build | --bundle | --bench [FOLDER]`.
"""
import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "window.c"
SOURCES = (SOURCE, HERE / "scan.c", HERE / "plan.c")   # compiled into one library
HEADERS = (HERE / "scan.h",)
BUILD = HERE.parents[1] / "build"   # the repo's build/ (make install; gpu_session.sh carries it)
LIBRARY = BUILD / "libjpeg_window.so"
ERR_DATA, ERR_WINDOW, ERR_ARGS = -1, -2, -3
_FIX = ("Install a C compiler and the libjpeg(-turbo) headers: on Debian/Ubuntu "
        "`sudo apt-get install gcc libjpeg-dev` (or `make sysdeps`); in the conda env "
        "`conda install -c conda-forge c-compiler libjpeg-turbo`. Then run "
        "`python -m vit_speedrun.jpeg.window --build`.")


def build_command(output):
    """The one compiler command (make install and the on-demand build both use it).
    In a conda env (jpeglib.h under sys.prefix) it compiles and links against that env."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError(f"jpeg_window: no C compiler (cc/gcc, or $CC) to build {LIBRARY}. "
                           + _FIX)
    cmd = [*cc.split(), "-O2", "-fPIC", "-shared", "-Wall", "-o", str(output),
           *map(str, SOURCES), "-Wl,-rpath,$ORIGIN"]  # a bundled libjpeg beside the .so comes first
    prefix = Path(sys.prefix)
    if (prefix / "include" / "jpeglib.h").exists():
        cmd += [f"-I{prefix / 'include'}", f"-L{prefix / 'lib'}",
                f"-Wl,-rpath,{prefix / 'lib'}"]
    return cmd + ["-ljpeg"]


def build():
    """Compile LIBRARY now (atomically: a concurrent importer never loads a partial file)."""
    for source in SOURCES + HEADERS:
        if not source.exists():
            raise RuntimeError(f"jpeg_window: {source} is missing (it is tracked in git: "
                               f"`git checkout -- {source}`)")
    BUILD.mkdir(exist_ok=True)
    tmp = LIBRARY.with_name(f".{LIBRARY.name}.{os.getpid()}")
    cmd = build_command(tmp)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise RuntimeError(f"jpeg_window: cannot run the compiler {cmd[0]!r} ({e}). " + _FIX)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        missing = "jpeglib.h" in done.stderr or "-ljpeg" in done.stderr
        raise RuntimeError(f"jpeg_window: building {LIBRARY} failed"
                           + (" (libjpeg headers or library not found)" if missing else "")
                           + f":\n  {' '.join(cmd)}\n{done.stderr.strip()}\n" + _FIX)
    os.replace(tmp, LIBRARY)
    return LIBRARY


def ensure_built():
    """LIBRARY, compiled first if it is missing or older than one of its sources."""
    newest = max(s.stat().st_mtime for s in SOURCES + HEADERS if s.exists())
    if not LIBRARY.exists() or LIBRARY.stat().st_mtime < newest:
        build()
    return LIBRARY


def bundle():
    """Copy the libjpeg that LIBRARY links into build/ (found by its rpath $ORIGIN there)."""
    ldd = subprocess.run(["ldd", str(ensure_built())], capture_output=True, text=True).stdout
    for line in ldd.splitlines():
        name, _, rest = line.strip().partition(" => ")
        if name.startswith("libjpeg.so"):
            path = Path(rest.split(" (")[0])
            if not path.exists():
                raise RuntimeError(f"jpeg_window: ldd cannot find {name} for {LIBRARY}")
            if path.resolve().parent != BUILD.resolve():
                shutil.copy2(path.resolve(), BUILD / name)
            return BUILD / name
    raise RuntimeError(f"jpeg_window: ldd lists no libjpeg.so for {LIBRARY}:\n{ldd}")


decode_window_c = header_c = _last_error = _restart_c = _free_c = _indexed_c = None
_index_c = _jpeg_size_c = _decode_indexed_c = None
ERR_NOINDEX = -4
INDEX_SPAN = 32   # pixels between index points: write_ffcv's default (README: speed, size)


def _bind():
    """Load LIBRARY (building it if needed) and declare the ctypes signatures."""
    global decode_window_c, header_c, _last_error, _restart_c, _free_c, _indexed_c, _index_c
    global _jpeg_size_c, _decode_indexed_c
    lib = ctypes.CDLL(str(ensure_built()))
    decode_window_c = lib.jpeg_window_decode
    decode_window_c.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + 4 * [ctypes.c_int] + [
        ctypes.c_void_p, ctypes.c_int]
    decode_window_c.restype = ctypes.c_int
    header_c = lib.jpeg_window_header
    header_c.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    header_c.restype = ctypes.c_int
    _last_error = lib.jpeg_window_last_error
    _last_error.restype = ctypes.c_char_p
    _restart_c = lib.jpeg_window_restart
    _restart_c.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
                           ctypes.POINTER(ctypes.c_size_t)]
    _restart_c.restype = ctypes.c_int
    _free_c = lib.jpeg_window_free
    _free_c.argtypes = [ctypes.c_void_p]
    _indexed_c = lib.jpeg_window_indexed
    _indexed_c.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _index_c = lib.jpeg_window_index
    _index_c.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                         ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)]
    _index_c.restype = ctypes.c_int
    _jpeg_size_c = lib.jpeg_window_jpeg_size
    _jpeg_size_c.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _jpeg_size_c.restype = ctypes.c_size_t
    _decode_indexed_c = lib.jpeg_window_decode_indexed
    _decode_indexed_c.argtypes = decode_window_c.argtypes
    _decode_indexed_c.restype = ctypes.c_int


def _bytes(data):
    arr = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) \
        else np.ascontiguousarray(data)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValueError(f"jpeg_window: need bytes or a 1-D uint8 array, got {arr.dtype} "
                         f"{arr.shape}")
    return arr


def _check(code, what):
    if code == ERR_DATA:
        raise ValueError(f"jpeg_window: {what}: not a decodable JPEG: "
                         f"{_last_error().decode(errors='replace')}")
    if code == ERR_WINDOW:
        raise ValueError(f"jpeg_window: {what}: window outside the image")
    if code != 0:
        raise ValueError(f"jpeg_window: {what}: bad arguments (code {code}; empty data?)")


def header(data):
    """(height, width) from the JPEG header."""
    arr, hw = _bytes(data), np.zeros(2, np.int32)
    _check(header_c(arr.ctypes.data, arr.size, hw.ctypes.data), "reading the header")
    return int(hw[0]), int(hw[1])


def decode_window(data, y, x, h, w):
    """h x w x 3 uint8: tf.image.decode_and_crop_jpeg(data, [y, x, h, w], channels=3)."""
    arr = _bytes(data)
    if min(h, w) <= 0:
        raise ValueError(f"jpeg_window: empty window (y, x, h, w) = {(y, x, h, w)}")
    out = np.empty((h, w, 3), np.uint8)
    _check(decode_window_c(arr.ctypes.data, arr.size, y, x, h, w, out.ctypes.data, 3 * w),
           f"decoding window (y, x, h, w) = {(y, x, h, w)}")
    return out


def decode_window_indexed(data, y, x, h, w):
    """decode_window through the index alone; None where decode_window would not take that
    path (no usable index, or a window that needs the whole image). For tests."""
    arr, out = _bytes(data), np.empty((h, w, 3), np.uint8)
    code = _decode_indexed_c(arr.ctypes.data, arr.size, y, x, h, w, out.ctypes.data, 3 * w)
    if code == ERR_NOINDEX:
        return None
    _check(code, f"decoding window (y, x, h, w) = {(y, x, h, w)} through the index")
    return out


def decode(data):
    """H x W x 3 uint8: tf.io.decode_jpeg(data, channels=3)."""
    h, w = header(data)
    return decode_window(data, 0, 0, h, w)


def fast_path(data):
    """Which path decodes data's windows: "index" (the bytes end with index()'s window
    index), "restart" (a restart marker after every MCU, as restart() makes) or "plain"."""
    arr = _bytes(data)
    return ("plain", "restart", "index")[_indexed_c(arr.ctypes.data, arr.size)]


def index(data, span=INDEX_SPAN):
    """bytes: data unchanged, then a window index (the bit position and DC predictors of an
    MCU every `span` pixels of each MCU row; jpeg/window.c) through which a window's decode
    skips the entropy decoding of the rows above it and of the columns outside it. None
    when data cannot be indexed (progressive, restart markers, an AC table that cannot pad
    the reader's lead MCU, ...): store it as it is. The bytes decode as data does
    everywhere (any decoder stops at data's EOI); the indexed path equals the plain one
    pixel for pixel (tests; write_ffcv checks each file)."""
    arr, out, size = _bytes(data), ctypes.c_void_p(), ctypes.c_size_t()
    code = _index_c(arr.ctypes.data, arr.size, int(span), ctypes.byref(out), ctypes.byref(size))
    if code == ERR_NOINDEX:
        return None
    _check(code, "indexing")
    try:
        return ctypes.string_at(out, size.value)
    finally:
        _free_c(out)


def jpeg_bytes(data):
    """The JPEG's own bytes: data without the window index index() appended (data itself
    when it has none). How to get the original files back out of a .beton."""
    arr = _bytes(data)
    return arr[:_jpeg_size_c(arr.ctypes.data, arr.size)].tobytes()


def restart(data):
    """bytes: data losslessly transcoded (the same DCT coefficients, quantisation tables and
    sampling; baseline, optimised Huffman tables) with a restart marker after every MCU.
    Its decode is data's, pixel for pixel (write_ffcv checks each file); its crop windows
    decode faster (only their MCUs are entropy-decoded)."""
    arr, out, size = _bytes(data), ctypes.c_void_p(), ctypes.c_size_t()
    _check(_restart_c(arr.ctypes.data, arr.size, ctypes.byref(out), ctypes.byref(size)),
           "transcoding with restart markers")
    try:
        return ctypes.string_at(out, size.value)
    finally:
        _free_c(out)


# ---------------------------------------------------------------------------------------
# Benchmark: images per CPU-second, the three decoders side by side in one run.
# ---------------------------------------------------------------------------------------
def inception_window(rng, height, width):
    """(y, x, h, w) from the RECIPE's sampler (TF GenerateRandomCrop: uniform height, area
    in [5%, 100%], aspect in [0.75, 1.33]; float64 here, which is fine for timing)."""
    area, lo = height * width, 0.05 * height * width
    for _ in range(100):
        ar = 0.75 + rng.random() * (1.33 - 0.75)
        h, hmax = round((lo / ar) ** 0.5), round((area / ar) ** 0.5)
        if round(hmax * ar) > width:
            hmax = int((width + 0.5 - 1e-7) / ar)
            hmax -= round(hmax * ar) > width
        hmax = min(hmax, height)
        h = hmax if h >= hmax else h + int(rng.integers(0, hmax - h + 1))
        w = round(h * ar)
        if w * h < lo:
            h += 1
            w = round(h * ar)
        if w * h > area:
            h -= 1
            w = round(h * ar)
        if lo <= w * h <= area and 0 < w <= width and 0 < h <= height:
            y = int(rng.integers(0, height - h)) if h < height else 0
            x = int(rng.integers(0, width - w)) if w < width else 0
            return y, x, h, w
    return 0, 0, height, width


def _timers():
    """njit loops over a batch of images (how the FFCV decoder calls them)."""
    from ffcv.libffcv import ctypes_imdecode
    from numba import njit
    dec = decode_window_c

    @njit(nogil=True)
    def ffcv_full(datas, sizes, shapes, out):
        for i in range(len(sizes)):
            h, w = shapes[i, 0], shapes[i, 1]
            if ctypes_imdecode(datas[i].ctypes.data, sizes[i], h, w, out.ctypes.data, h, w,
                               0, 0, 1, 1, False, False) != 0:
                raise ValueError("ffcv imdecode failed")

    @njit(nogil=True)
    def ours(datas, sizes, windows, out):
        for i in range(len(sizes)):
            y, x, h, w = windows[i, 0], windows[i, 1], windows[i, 2], windows[i, 3]
            if dec(datas[i].ctypes.data, sizes[i], y, x, h, w, out.ctypes.data, 3 * w) != 0:
                raise ValueError("jpeg_window_decode failed")

    return ffcv_full, ours


def _pack(blobs):
    """(uint8 [n, longest], int64 [n] sizes): byte strings in one array for numba."""
    datas = np.zeros((len(blobs), max(len(b) for b in blobs)), np.uint8)
    for i, b in enumerate(blobs):
        datas[i, :len(b)] = b
    return datas, np.array([len(b) for b in blobs], np.int64)


def bench(folder, rounds=5, seed=0):
    """Print images per CPU-second for FFCV full, ours full, ours on inception windows of
    the original files, of the same with their window index, and of their restart
    transcodes."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"jpeg_window --bench: no .jpg/.jpeg files in {folder}")
    blobs = [np.fromfile(p, np.uint8) for p in files]
    datas, sizes = _pack(blobs)
    rdatas, rsizes = _pack([np.frombuffer(restart(b), np.uint8) for b in blobs])
    idatas, isizes = _pack([np.frombuffer(index(b) or b.tobytes(), np.uint8) for b in blobs])
    shapes = np.array([header(b) for b in blobs], np.int64)
    rng = np.random.default_rng(seed)
    full = np.concatenate([np.zeros_like(shapes), shapes], 1)
    windows = np.array([inception_window(rng, h, w) for h, w in shapes], np.int64)
    out = np.empty(int(shapes.prod(1).max()) * 3, np.uint8)
    ffcv_full, ours = _timers()
    runs = {"ffcv imdecode, full image": lambda: ffcv_full(datas, sizes, shapes, out),
            "jpeg_window, full image": lambda: ours(datas, sizes, full, out),
            "jpeg_window, inception window": lambda: ours(datas, sizes, windows, out),
            "  the same, window index": lambda: ours(idatas, isizes, windows, out),
            "  the same, restart transcode": lambda: ours(rdatas, rsizes, windows, out)}
    cpu = dict.fromkeys(runs, 0.0)
    for run in runs.values():
        run()  # compile and warm up
    for _ in range(rounds):  # interleaved, so that machine noise hits all alike
        for name, run in runs.items():
            t = time.process_time()
            run()
            cpu[name] += time.process_time() - t
    area = (windows[:, 2] * windows[:, 3] / shapes.prod(1)).mean()
    print(f"{len(files)} JPEGs, mean {sizes.mean() / 1e3:.1f} kB (with the window index "
          f"{isizes.mean() / 1e3:.1f} kB, restart transcode {rsizes.mean() / 1e3:.1f} kB), mean "
          f"{shapes[:, 0].mean():.0f} x {shapes[:, 1].mean():.0f}; windows: RECIPE sampler,"
          f" mean area {area:.0%}; {rounds} rounds")
    base = len(files) * rounds / cpu["ffcv imdecode, full image"]
    for name, seconds in cpu.items():
        speed = len(files) * rounds / seconds
        print(f"  {name:32s} {speed:7.1f} images / CPU-s  ({speed / base:.2f}x ffcv)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--build", action="store_true", help=f"compile {LIBRARY}")
    group.add_argument("--bundle", action="store_true",
                       help="also copy the libjpeg it links into build/")
    group.add_argument("--bench", nargs="?", const="", metavar="FOLDER",
                       help="time decoders on FOLDER's JPEGs (default: 40 generated photos)")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the files (5)")
    args = parser.parse_args(argv)
    try:
        if args.build:
            print(build())
        elif args.bundle:
            print(bundle())
        elif args.bench:
            _bind()
            bench(args.bench, args.rounds)
        else:  # --bench without a folder
            _bind()
            from vit_speedrun.data.photos import make_photo_folder
            with tempfile.TemporaryDirectory() as folder:
                make_photo_folder(folder, n=40)
                bench(folder, args.rounds)
    except RuntimeError as e:
        raise SystemExit(str(e))


if __name__ == "__main__":
    main()
else:
    _bind()
