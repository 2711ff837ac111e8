"""The C decoder (vit_speedrun/jpeg/*.c) under AddressSanitizer and UBSan: damaged and
crafted files (sanitized_fuzz.py) never make it read outside a file or a record, write
outside an output, or overflow an integer, which the crash-only fuzz tests cannot see; and
the coverage fuzzer's harness (fuzz_window.c, `make fuzz`) builds and runs its seeds."""
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
    runtimes into Python, its compiler command, the runtimes). Skipped where the C compiler
    has no sanitizer runtime (gcc and clang ship one; Debian's gcc has it, so CI runs this)."""
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
               UBSAN_OPTIONS="print_stacktrace=1")
    return library, env, cmd, runtimes


def _run(sanitized, *args):
    library, env = sanitized[:2]
    return subprocess.run([sys.executable, str(FUZZ), "--library", str(library), *args], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_a_read_past_the_file_is_reported(sanitized):
    """The harness sees what it is for: one byte read past an exact-size block aborts."""
    done = _run(sanitized, "--past-the-end")
    assert "in bounds" in done.stdout and "past the end" not in done.stdout, done.stdout
    assert done.returncode != 0 and "heap-buffer-overflow" in done.stderr, done.stderr[-2000:]


def test_damaged_and_crafted_files_under_the_sanitizers(sanitized):
    """Every form of the golden and small files, an index whose predictor change would
    overflow int64, and 20,000 damaged ones: no sanitizer report, and every path taken."""
    done = _run(sanitized, "--mutants", "20000", "--seed", "0")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    assert "runtime error" not in done.stderr and "Sanitizer" not in done.stderr, done.stderr
    counts = json.loads(done.stdout.split(":", 1)[1])
    assert counts["files"] > 20000, counts
    assert min(counts[k] for k in ("no header", "refused", "index path", "planned")) > 100, \
        counts


def test_the_coverage_fuzzer_harness_runs_its_seeds(sanitized, tmp_path):
    """fuzz_window.c (what `make fuzz` runs under libFuzzer) built with the same compiler
    and sanitizers as a plain program: the seeds `make fuzz` starts from (every file form,
    the overflowing predictor change) run clean, and a missing or unreadable file is an error."""
    _, env, cmd, _ = sanitized
    program = tmp_path / "fuzz_window"
    sources = [a for a in cmd if a.endswith(".c")]
    build = [a for a in cmd if a not in ("-shared", "-fPIC") and not a.endswith(".c")]
    build[build.index("-o") + 1] = str(program)
    done = subprocess.run([*build[:-1], "-DFUZZ_FILES", str(FUZZ.with_name("fuzz_window.c")),
                           *sources, build[-1]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    seeds = subprocess.run([sys.executable, str(FUZZ), "--seeds", str(tmp_path / "seeds")],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert seeds.returncode == 0, seeds.stderr
    files = sorted(map(str, (tmp_path / "seeds").iterdir()))
    assert len(files) > 100 and f"wrote {len(files)} seeds" in seeds.stdout
    run_env = {k: v for k, v in env.items() if k != "LD_PRELOAD"}   # linked in, not preloaded
    done = subprocess.run([str(program), *files], env=run_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and f"ran {len(files)} inputs" in done.stdout, done.stderr[-4000:]
    assert "runtime error" not in done.stderr, done.stderr
    missing = subprocess.run([str(program), str(tmp_path / "nothing")], env=run_env,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    # A directory opens but has no size to read (ftell says LONG_MAX): exit 2, no report.
    unreadable = subprocess.run([str(program), str(tmp_path)], env=run_env,
                                capture_output=True, text=True)
    assert unreadable.returncode == 2 and "cannot read" in unreadable.stderr, unreadable.stderr
    assert "Sanitizer" not in unreadable.stderr, unreadable.stderr
