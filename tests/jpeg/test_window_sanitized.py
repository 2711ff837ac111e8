"""The C decoder (vit_speedrun/jpeg/*.c) under AddressSanitizer and UBSan: damaged and
crafted files (sanitized_fuzz.py) never make it read outside a file or a record, write
outside an output, or overflow an integer, which the crash-only fuzz tests cannot see."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from vit_speedrun.jpeg import window as jw

FUZZ = Path(__file__).with_name("sanitized_fuzz.py")
SANITIZE = ["-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all"]


def _runtime(compiler, name):
    """The compiler's own sanitizer runtime (libasan.so, ...), or None."""
    done = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True,
                          text=True)
    path = Path(done.stdout.strip())
    return path.resolve() if done.returncode == 0 and path.is_absolute() and path.exists() \
        else None


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    """(the library built with the sanitizers, the environment that preloads their
    runtimes into Python). Skipped where the C compiler has no sanitizer runtime (gcc and
    clang ship one; Debian's gcc has it, so CI runs this)."""
    library = tmp_path_factory.mktemp("asan") / "libjpeg_window.so"
    cmd = jw.build_command(library)
    cmd = [cmd[0], *SANITIZE, *(a for a in cmd[1:] if a != "-O2")]
    runtimes = [_runtime(cmd[0], n) for n in ("libasan.so", "libubsan.so")]
    if None in runtimes:
        pytest.skip(f"{cmd[0]} has no libasan/libubsan runtime")
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, " ".join(cmd) + "\n" + done.stderr
    env = dict(os.environ, LD_PRELOAD=":".join(map(str, runtimes)),
               ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1",   # Python's own
               UBSAN_OPTIONS="print_stacktrace=1", NUMBA_DISABLE_JIT="1")
    return library, env


def _run(sanitized, *args):
    library, env = sanitized
    return subprocess.run([sys.executable, str(FUZZ), str(library), *args], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_a_read_past_the_file_is_reported(sanitized):
    """The harness sees what it is for: one byte read past an exact-size block aborts."""
    done = _run(sanitized, "--past-the-end")
    assert "in bounds" in done.stdout and "past the end" not in done.stdout, done.stdout
    assert done.returncode != 0 and "heap-buffer-overflow" in done.stderr, done.stderr[-2000:]


def test_damaged_and_crafted_files_under_the_sanitizers(sanitized):
    """Every form of the golden and small files, an index whose predictor change would
    overflow int64, and 20,000 damaged ones: no sanitizer report, and every path taken."""
    done = _run(sanitized, "20000", "0")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    assert "runtime error" not in done.stderr and "Sanitizer" not in done.stderr, done.stderr
    counts = json.loads(done.stdout.split(":", 1)[1])
    assert counts["files"] > 20000, counts
    assert min(counts[k] for k in ("no header", "refused", "index path", "planned")) > 100, \
        counts
