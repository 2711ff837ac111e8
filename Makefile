# One-command setup and checks. `make install` is idempotent: it only redoes work
# when a requirements file changed. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
APT_PKGS := pkg-config libturbojpeg0-dev libopencv-dev libjpeg-dev
# vit_speedrun/jpeg/window.c (TF-exact window decode), compiled by its window.py, which holds
# the command; the library lands in build/, where window.py loads it from.
JPEG_SO := build/libjpeg_window.so
# Numba's on-disk cache: compiled kernels survive between runs of the suite and the demo.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: install sysdeps test demo clean jpeg-bundle gpu-wheels fuzz

install: $(STAMP) $(JPEG_SO)

# ffcv compiles a C extension against libturbojpeg and OpenCV, found through pkg-config;
# vit_speedrun/jpeg/window.c needs the libjpeg(-turbo) API headers (libjpeg.pc).
sysdeps:
	@if pkg-config --exists libturbojpeg 2>/dev/null && pkg-config --exists libjpeg 2>/dev/null && \
	    (pkg-config --exists opencv4 2>/dev/null || pkg-config --exists opencv 2>/dev/null); then \
	  exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "ffcv and jpeg_window need pkg-config, libturbojpeg, libjpeg and OpenCV headers, and this is not a Debian/Ubuntu"; \
	  echo "machine: install them with your package manager, or use the conda route (environment.yml)."; \
	  exit 1; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "ffcv and jpeg_window need system packages. Run this, then 'make install' again:"; \
	  echo "  sudo apt-get update && sudo apt-get install -y $(APT_PKGS)"; \
	  exit 1; fi; \
	echo "Installing $(APT_PKGS) with apt-get"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null

# torch goes in first and alone: with torch==2.13.0 already present, nothing later
# can make pip resolve another (CUDA) build of it.
$(STAMP): requirements.txt requirements-dev.txt requirements-extras.txt requirements-timm.txt | sysdeps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q $$(grep -E '^torch==' requirements.txt)
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt -r requirements-extras.txt
	rm -rf $(VENV)/timm && $(BIN)/python -m pip install -q --no-deps --target $(VENV)/timm -r requirements-timm.txt
	$(BIN)/python -c "import ffcv, fastargs, numba, torch, torchmetrics; print('installed: torch', torch.__version__, '| numba', numba.__version__)"
	touch $(STAMP)

$(JPEG_SO): $(wildcard vit_speedrun/jpeg/*.c vit_speedrun/jpeg/*.h) | $(STAMP)
	$(BIN)/python -m vit_speedrun.jpeg.window --build

# For a machine without libjpeg (a GPU box): copy the libjpeg that the .so links into
# build/ beside it (found through its rpath $ORIGIN); carrying build/ is then enough.
jpeg-bundle: $(JPEG_SO)
	$(BIN)/python -m vit_speedrun.jpeg.window --bundle

# numba's CUDA target for the GPU box (Python 3.12, torch cu130, no internet), for
# augment.where=device: numba-cuda, its CUDA bindings and NVVM, as wheels to carry there
# (.ci/gpu_session.sh cuda). The CPU route and CI need none of them.
GPU_WHEELS_NVVM := nvidia-nvvm==13.0.88
GPU_WHEELS_REST := numba-cuda==0.30.4 cuda-bindings==13.0.3 cuda-core==0.5.1 cuda-pathfinder==1.4.0
gpu-wheels:
	for part in nvvm rest; do \
	  pkgs="$(GPU_WHEELS_NVVM)"; [ $$part = rest ] && pkgs="$(GPU_WHEELS_REST)"; \
	  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_12_x86_64 \
	    -d .whl-cuda/$$part $$pkgs || exit 1; done

test: install
	$(BIN)/python -m pytest -q tests

# Coverage-guided fuzzing of the C decoder (vit_speedrun/jpeg/*.c) after a change to it:
# libFuzzer with ASan and UBSan (needs clang: sudo apt-get install clang), from the seeds
# tests/jpeg/sanitized_fuzz.py writes. A finding is saved as build/fuzz/crash-* (or leak-,
# timeout-); replay it with `build/fuzz/fuzz_window build/fuzz/crash-...`.
FUZZ_SECONDS ?= 600
fuzz: install
	@command -v clang >/dev/null || { echo "make fuzz needs clang: sudo apt-get install clang"; exit 1; }
	mkdir -p build/fuzz/corpus
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	  -o build/fuzz/fuzz_window tests/jpeg/fuzz_window.c $(wildcard vit_speedrun/jpeg/*.c) -ljpeg
	$(BIN)/python tests/jpeg/sanitized_fuzz.py --seeds build/fuzz/seeds
	cd build/fuzz && ./fuzz_window -max_total_time=$(FUZZ_SECONDS) -max_len=60000 \
	  -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 corpus seeds

# The whole path on scikit-learn's bundled digits: write, convert, train, summary (CPU).
demo: install
	$(BIN)/python demo.py

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache build
