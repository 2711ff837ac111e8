#!/usr/bin/env bash
# The checklist of a session on a lent GPU box (README "Speed"), NOT run by CI (CI has no GPU).
# Each phase fits one 10-minute device call; every figure comes from a repo command:
#   bash .ci/gpu_session.sh setup step      # wheels, smoke test, step benchmark + profile, GPU tests
#   bash .ci/gpu_session.sh setup data loader train  # photos -> betons, loader at 16/8 threads,
#                                          # real torchrun runs: twice unbroken, SIGTERM + resume
#                                          # (exit 1 unless weights and train records match)
#   bash .ci/gpu_session.sh setup push      # step variants (patch conv, compile modes)
#   bash .ci/gpu_session.sh setup data loader variants  # trainer: compile mode x loader threads
#   bash .ci/gpu_session.sh setup gap        # the trainer's step vs the step benchmark's (.ci/trainer_gap.py)
#   bash .ci/gpu_session.sh setup cuda data device  # augment.where=device (issue 18): numba's
#                                          # CUDA target, the batch equal to the CPU twin's,
#                                          # ms per batch, train_vit at 2/4/15 threads per path
# `cuda` needs numba's CUDA target on the box: if it has none, `make gpu-wheels` here puts the
# wheels in .whl-cuda/{nvvm,rest}/ (93 MB: over one call's 64 MiB carry), and two calls carry
# them in turn (`carry: [".whl-cuda/nvvm"]`, then `[".whl-cuda/rest", ...]`) while the machine
# is warm; each runs `bash .ci/gpu_session.sh cuda` first, which installs what it finds.
# Knobs: TRAIN_BETON=train_bare (the JPEGs without their window index: slower crops) or train_restart, train_raw with RAW=1 (raw pixels: a loader that keeps up), STEPS=200,
# PHOTOS=2560, LOADER_WORKERS="16 8", VARIANTS="default:16 reduce-overhead:16 ...", UNBROKEN=unbroken (one
# unbroken run instead of two in `train`: about a minute less).
# Needs the offline wheels in .whl/ (../shared/gpu-kit: `mkdir -p .whl && cp
# ../shared/gpu-kit/*.whl ../shared/gpu-kit/smoke_test.py .whl/`) and, where built, build/.
# Logs go to $OUT (the device tool brings them back) or ./gpu_logs.
set -uo pipefail
PY=${PY:-python3}
LOGS=${OUT:-gpu_logs}
WORK=${WORK:-/tmp/vit_gpu}
mkdir -p "$LOGS" "$WORK"
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=$WORK/numba_cache
say() { echo "=== $(date +%T) $*"; }

setup() {
  say setup
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version --format=csv
  lscpu | grep -E "^CPU\(s\)|Thread|Core\(s\)|Socket|Model name"
  $PY .whl/smoke_test.py > "$LOGS/smoke.log" 2>&1; tail -n 2 "$LOGS/smoke.log"
  # our own compiled helper, carried in build/ with the libjpeg it links (make jpeg-bundle)
  ldd build/libjpeg_window.so | grep -E "jpeg|not found"
  $PY -c "from vit_speedrun.jpeg import window as j; print('jpeg_window OK', j.LIBRARY)" || exit 1
}

cuda() {
  say "numba's CUDA target"
  for d in .whl-cuda/nvvm .whl-cuda/rest; do
    [ -d "$d" ] && $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
        "$d"/*.whl
  done
  export PYTHONPATH=/tmp/site
  export NUMBA_CUDA_NVVM=$(ls /tmp/site/nvidia/cu13/lib/libnvvm.so* /tmp/site/nvidia/*/nvvm/lib64/libnvvm.so* 2>/dev/null | head -1)
  $PY -c "
from numba import cuda
import numpy as np
@cuda.jit
def k(a):
    a[cuda.grid(1)] += 1
a = cuda.to_device(np.zeros(32, np.int32)); k[1, 32](a)
print('numba cuda OK', cuda.get_current_device().name, a.copy_to_host().sum())" || exit 1
}

device() {
  say "augment.where=device (issue 18)"
  local beton=$WORK/${TRAIN_BETON:-train}.beton
  $PY benchmark.py device --beton "$beton" --batch-size 128 2>&1 | tee "$LOGS/device.log" | tail -n 2
  grep -q "equal the CPU twin's: True" "$LOGS/device.log" || { echo "device != CPU twin"; exit 1; }
  $PY benchmark.py loader --beton "$beton" --where cpu device --workers 15 2>&1 \
      | tee -a "$LOGS/device.log" | tail -n 4
  for where in cpu device; do
    for threads in 2 4 15; do
      $PY benchmark.py full --config-file configs/vit_s16_90ep.yaml --steps ${STEPS:-200} \
          --data.train_dataset="$beton" --data.num_workers=$threads --augment.where=$where \
          2>&1 | tee "$LOGS/device_full_${where}_${threads}.log" | grep RESULT
    done
  done
}

step() {
  say "step benchmark (issue 10, item 1)"
  for bs in 128 256; do
    $PY benchmark.py step --variant S/16 --batch-size "$bs" --compile 0 --steps 30
    $PY benchmark.py step --variant S/16 --batch-size "$bs" --compile 1 --steps 50 \
        $([ "$bs" = 128 ] && echo --profile 5)
  done 2>&1 | tee "$LOGS/step.log" | grep -v "^  "
  grep -A13 "top kernels" "$LOGS/step.log" | head -14
  say "GPU-only tests"
  $PY -m pytest -q -s -p no:cacheprovider tests/test_gpu.py \
      "tests/pp/test_ffcv_ops.py::test_mixing_on_the_device_gives_the_same_numbers" \
      2>&1 | tee "$LOGS/pytest_gpu.log" | tail -n 6
}

push() {
  say "step variants at batch 128 (issue 10, Push)"
  { $PY benchmark.py step --batch-size 128 --compile 1 --steps 50 --profile 5
    $PY benchmark.py step --batch-size 128 --compile 1 --steps 50 --patch-embed conv
    $PY benchmark.py step --batch-size 128 --compile 1 --steps 50 --compile-mode reduce-overhead
    timeout 240 $PY benchmark.py step --batch-size 128 --compile 1 --steps 50 \
        --compile-mode max-autotune-no-cudagraphs; } 2>&1 | tee "$LOGS/push.log" | grep -v "^  "
  grep -A13 "^profile" "$LOGS/push.log" | head -14
}

gap() {
  say "where the trainer's step time goes (.ci/trainer_gap.py)"
  $PY .ci/trainer_gap.py 2>&1 | tee "$LOGS/gap.log" | grep -E "^RESULT|^trainer_gap"
}

data() {
  say "photos and betons"
  $PY benchmark.py photos --out "$WORK/photos" --n "${PHOTOS:-2560}" --overwrite | tail -n 1
  for split in train minival; do
    $PY write_ffcv.py --cfg.data_dir="$WORK/photos" --cfg.write_path="$WORK/$split.beton" \
        --cfg.split=$split --cfg.overwrite=1 2>&1 | tail -n 1
  done
  $PY write_ffcv.py --cfg.data_dir="$WORK/photos" --cfg.write_path="$WORK/train_restart.beton" \
      --cfg.split=train --cfg.write_mode=restart --cfg.overwrite=1 2>&1 | tail -n 1
  $PY write_ffcv.py --cfg.data_dir="$WORK/photos" --cfg.write_path="$WORK/train_bare.beton" \
      --cfg.split=train --cfg.window_index=0 --cfg.overwrite=1 2>&1 | tail -n 1
  [ "${RAW:-0}" = 1 ] && $PY write_ffcv.py --cfg.data_dir="$WORK/photos" \
      --cfg.write_path="$WORK/train_raw.beton" --cfg.split=train --cfg.write_mode=raw \
      --cfg.overwrite=1 2>&1 | tail -n 1
}

loader() {
  say "loader (issue 10, item 2)"
  for w in ${LOADER_WORKERS:-16 8}; do
    $PY benchmark.py loader --beton "$WORK/train.beton" --compare "$WORK/train_restart.beton" \
        "$WORK/train_bare.beton" \
        --batch-size 128 --workers $w \
        --batches 30 2>&1 | grep RESULT
  done | tee "$LOGS/loader.log"
}

TRAIN_BETON=${TRAIN_BETON:-train}
STEPS=${STEPS:-200}
train_cmd() {  # a short real run of the recipe: one torchrun process, nccl, compile, bf16
  $PY -m torch.distributed.run --standalone --nproc_per_node=1 train_vit.py \
    --config-file configs/vit_s16_90ep.yaml --data.train_dataset="$WORK/$TRAIN_BETON.beton" \
    --data.minival_dataset="$WORK/minival.beton" --data.val_dataset= --data.v2_dataset= \
    --data.real=0 --training.batch_size=128 --eval.batch_size=128 \
    --training.max_steps="$STEPS" --optimizer.warmup_steps=50 --eval.every=100 \
    --logging.checkpoint_every=100 --logging.log_every=25 --logging.progress=0 \
    --logging.folder="$1" "${@:2}"
}

variants() {  # "compile_mode:workers" runs of the trainer, same data and seed; losses compared
  rm -rf "$WORK"/v_*
  for v in ${VARIANTS:-default:16 reduce-overhead:16 reduce-overhead:15}; do
    mode=${v%%:*} workers=${v##*:}
    say "train $TRAIN_BETON compile_mode=$mode num_workers=$workers"
    export -f train_cmd; export PY WORK TRAIN_BETON STEPS
    TORCH_LOGS=recompiles timeout 150 bash -c 'train_cmd "$@"' _ "$WORK/v_$v" \
      --training.compile_mode="$mode" --data.num_workers="$workers" > "$LOGS/variant_$v.log" 2>&1
    echo "exit $?; recompile messages: $(grep -c 'Recompiling' "$LOGS/variant_$v.log")"
    grep -A4 "== summary" "$LOGS/variant_$v.log" | grep -E "speed|MFU"
  done
  $PY - "$WORK"/v_* <<'EOF' | tee "$LOGS/variants.log"
import json, sys
from pathlib import Path
runs = {Path(p).name[2:]: {r["step"]: r for r in map(json.loads, open(Path(p) / "log.jsonl"))
                           if "train_loss" in r} for p in sys.argv[1:]}
names = list(runs)
print("step " + " ".join(f"{n:>22}" for n in names) + "   (loss, data_wait, gpu_wait, img/s)")
for s in sorted(runs[names[0]]):
    print(f"{s:4d} " + " ".join(
        f"{runs[n][s]['train_loss']:.5f} {runs[n][s]['data_wait']:3.0%} {runs[n][s]['gpu_wait']:3.0%} "
        f"{runs[n][s]['img_per_s']:5.0f}" if s in runs[n] else " " * 22 for n in names))
EOF
}

train() {
  say "train on $TRAIN_BETON: twice unbroken (the run-to-run noise), once stopped and resumed"
  rm -rf "$WORK/unbroken" "$WORK/unbroken2" "$WORK/broken"
  for run in ${UNBROKEN:-unbroken unbroken2}; do
    TORCH_LOGS=recompiles train_cmd "$WORK/$run" > "$LOGS/train_$run.log" 2>&1
    echo "$run: exit $?; recompile messages: $(grep -c 'Recompiling' "$LOGS/train_$run.log")"
    grep -A4 "== summary" "$LOGS/train_$run.log" | grep -E "speed|MFU"
  done
  [ -d "$WORK/unbroken2" ] || cp -r "$WORK/unbroken" "$WORK/unbroken2"  # UNBROKEN=unbroken: one
  train_cmd "$WORK/broken" > "$LOGS/train_broken.log" 2>&1 &
  pid=$!
  while kill -0 $pid 2>/dev/null; do
    if grep -qE '"step": [1-9][0-9][0-9]' "$WORK/broken/log.jsonl" 2>/dev/null; then
      pkill -TERM -P $pid; break; fi  # to torchrun (the subshell's child), as a scheduler does
    sleep 0.5
  done
  wait $pid; echo "broken: torchrun exit $?"
  # torchrun forwards SIGTERM to the rank, which checkpoints; without that line the run
  # trained to the end and the comparison below would prove nothing
  grep "SIGTERM: checkpoint written" "$LOGS/train_broken.log" || {
    echo "NOT STOPPED: the run was not preempted"; return 1; }
  train_cmd "$WORK/broken" > "$LOGS/train_resumed.log" 2>&1
  echo "resumed: exit $?"; grep -E "resuming|speed" "$LOGS/train_resumed.log"
  for run in unbroken unbroken2 broken; do cp "$WORK/$run/log.jsonl" "$LOGS/log_$run.jsonl"; done
  $PY - "$WORK"/{unbroken,unbroken2,broken}/log.jsonl <<'EOF' | tee "$LOGS/compare.log"
import json, sys
# train records only: an eval record of the same step would hide the loss of steps 100, 200
a, b, c = ({r["step"]: r for r in map(json.loads, open(p)) if "train_loss" in r}
           for p in sys.argv[1:])
print("step  loss: unbroken  unbroken2  resumed | data_wait gpu_wait img/s (unbroken)")
for s in sorted(a.keys() & c.keys()):
    if "train_loss" in a[s]:
        print(f"{s:4d}  {a[s]['train_loss']:.5f}  {b[s]['train_loss']:.5f}  "
              f"{c[s]['train_loss']:.5f} | {a[s]['data_wait']:.0%} {a[s]['gpu_wait']:.0%} "
              f"{a[s]['img_per_s']:,.0f}")
for name, x in (("unbroken2", b), ("resumed", c)):
    d = [abs(x[s]["train_loss"] - a[s]["train_loss"]) for s in a if "train_loss" in a[s]]
    print(f"max |loss - unbroken| of {name}: {max(d):.5f}, mean {sum(d) / len(d):.5f}")
import torch
from pathlib import Path
ck = [torch.load(Path(p).parent / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
      for p in (sys.argv[1], sys.argv[3])]
same = ck[0].keys() == ck[1].keys() and all(torch.equal(ck[0][k], ck[1][k]) for k in ck[0])
print(f"final weights, resumed vs unbroken: {'bit-identical' if same else 'DIFFERENT'}")
records = [{s: (r["train_loss"], r["grad_norm"]) for s, r in x.items()} for x in (a, c)]
print(f"train records (loss, grad norm), resumed vs unbroken: "
      f"{'identical' if records[0] == records[1] else 'DIFFERENT'}")
sys.exit(0 if same and records[0] == records[1] else 1)  # the session's exit status says it
EOF
}

for phase in "$@"; do "$phase"; done
