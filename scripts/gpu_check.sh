#!/usr/bin/env bash
# The CUDA check of the project, for a GPU machine without Rust or network (H100/H200). Prepare
# it here with `cargo xtask cuda-build` (writes dist/cuda/: lt.xz and the Fashion-MNIST files),
# carry the working tree and dist/cuda there, and run from the repository root:
#
#   bash scripts/gpu_check.sh     # output in $OUT (or dist/cuda/out/<call>); logs: logs.tar.gz
#
# Steps, each with its own time limit and all within one budget (CHECK_BUDGET, 345 s: a step
# that would run past it gets the time left, or is skipped), so that one call prints its summary
# within 6 minutes; a failing step does not stop the others, and one summary table is printed
# last. The check is two such calls, by priority: the first (the default) runs steps 2-4, what
# the issue's "done when" reads; the second, GPU_CHECK_STEPS=more, runs steps 5-8, what explains
# it (the summary's last lines name the steps cut short, and the other call's). The setup runs
# in both:
#   1. setup: unpack dist/cuda/lt.xz (python3's lzma), library path from PyTorch's NVIDIA wheels,
#      nvidia-smi, missing libraries (ldd);
#   2. selftest: lt selftest --device cuda, every golden check of both backends, strict f32 (TF32
#      off; cuDNN's own warnings and errors in its log), each group of checks in a process of its
#      own (a fault that poisons the CUDA context fails only its group), the bf16 mixed-precision
#      checks (bf16 against f32 on the GPU), the taped-executor checks (against candle's autograd),
#      the frozen-snapshot checks (against its model's evaluation), SGD's in-place CUDA passes
#      against its tensor ops, whether training steps run twice from one seed give the same
#      bits, and the loader's batches made on the device against the host's;
#   3. pipeline: Fashion-MNIST-LT on CUDA, a short stage 1 (SGD + SWA), extraction, SRepr, eval,
#      with its wall time and accuracy against the CPU reference in scripts/gpu_check_reference.txt
#      (through candle's autograd, or with SGD's tensor ops, when step 2's taped or SGD checks
#      failed: the summary's row says so);
#   4. bench: ResNet-32 batch 128 train step and eval, and ResNet-50 batch 256 (224x224) train
#      step, the project (f32, TF32 convolutions, bf16 mixed precision) against PyTorch CUDA in
#      the same run (f32 with TF32 off, f32 NCHW and channels-last with PyTorch's default TF32,
#      bf16 autocast + channels-last), with peak GPU memory and the host's share of a step; the
#      rows the issue's bars read first (the project's TF32 rows and PyTorch's), then the project's
#      bf16 and strict-f32 rows;
#   5. loader: batches made on the device, CIFAR-size (2 workers) and generated 500 x 375 JPEGs
#      decoded and cropped to 224 (12 workers, as the ImageNet-LT preset) against torchvision's
#      DataLoader on the same files;
#   6. bench-more, what explains it: the ResNet-32 training step once more with freed device
#      memory released at every synchronisation (LT_CUDA_RELEASE_FREED=1, the driver's default)
#      and with SGD's tensor ops instead of its CUDA kernel (LT_SGD_TENSOR_OPS=1), the ResNet-32
#      and ResNet-50 training steps with cuDNN's spatial batch-norm mode instead of its
#      persistent one (LT_CUDNN_BN_SPATIAL=1), one profiled training step each of ResNet-32 and
#      ResNet-50 (every forward and backward op timed between device syncs), ResNet-50's eval as
#      in step 4, and last the training steps once more through candle's autograd (--autograd;
#      the default is the taped executor, the backward pass walked by hand); each against the
#      default step measured in the same call (step 4's rows, or measured first when this call
#      has none), in a table of its own in bench.md; it leaves step 7 100 s;
#   7. retrain: stage 2 at ImageNet-LT size, SRepr for 3 epochs on generated features (115,846 x
#      2,048, M = 4, f16; the 2.8 GB file written to the work directory first), kept on the device;
#   8. cpu: the CPU kernels on this machine's own CPU (often one with AVX-512, which the
#      development machine may lack): ResNet-32 batch 128 train step and eval with each kernel set the
#      CPU has (LT_KERNELS), against PyTorch's CPU channels-last, all cores.
# Within a call they run in that order: a budget cut takes the last ones. A call that runs any of
# steps 2-4 ends with issue #11's "done when", one PASS/FAIL/UNMEASURED line per bar, headed by
# the commit the binary was built from (dist/cuda/BUILD), or the binary given as LT.
# Environment: OUT (output folder), LT (a binary to use instead of unpacking dist/cuda/lt.xz),
# GPU_CHECK_DEVICE (default cuda; `cpu` runs the same steps on the CPU, for a dry run),
# CHECK_BUDGET (seconds for all steps, default 345), GPU_CHECK_STEPS (the steps of this call:
# `done-when` (the default: selftest pipeline bench), `more` (loader bench-more retrain cpu),
# `all`, or some of selftest pipeline bench loader bench-more retrain cpu, to rerun what failed;
# they run in the order above, and the setup always runs), GPU_CHECK_KEEP=1 (keep the work
# directory).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
# The steps by priority: what the issue's "done when" reads (the golden checks, the pipeline, the
# ratios against PyTorch) before what explains them, so that a budget cut takes the extras.
# GPU_CHECK_STEPS names this call's (a rerun of what failed, or the second call).
ALL_STEPS="selftest pipeline bench loader bench-more retrain cpu"
DONE_WHEN="selftest pipeline bench" MORE="loader bench-more retrain cpu"
# WANT: the steps asked for; CALL: the call's name, the words given joined by '+' (done-when,
# more, bench+cpu, ...).
WANT="" CALL=""
set -f
for s in ${GPU_CHECK_STEPS:-done-when}; do
  CALL="$CALL${CALL:++}$s"
  case $s in
    done-when) WANT="$WANT $DONE_WHEN" ;;
    more) WANT="$WANT $MORE" ;;
    all) WANT="$WANT $ALL_STEPS" ;;
    selftest | pipeline | bench | bench-more | loader | retrain | cpu) WANT="$WANT $s" ;;
    *)
      echo "GPU_CHECK_STEPS: unknown step '$s' (done-when, more, all, or some of $ALL_STEPS)" >&2
      exit 2
      ;;
  esac
done
set +f
# The call's steps in the order above (each once), and the others.
STEPS="" OTHER=""
for s in $ALL_STEPS; do
  case " $WANT " in *" $s "*) STEPS="$STEPS $s" ;; *) OTHER="$OTHER $s" ;; esac
done
STEPS=${STEPS# } OTHER=${OTHER# }
if [ -z "$STEPS" ]; then
  echo "GPU_CHECK_STEPS names no step (done-when, more, all, or some of $ALL_STEPS)" >&2
  exit 2
fi
OUT=${OUT:-dist/cuda/out/$CALL}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# $OUT (by default one folder per call) gets a few files (the device tool brings back at most 8):
# summary.txt and summary.tsv, bench.md and bench.jsonl (this call's rows only), and logs.tar.gz,
# the step logs, packed again after every step so that a check stopped half-way still leaves them.
# The logs, the unpacked binary and the pipeline's run directory stay in a work directory outside
# $OUT, removed at the end (GPU_CHECK_KEEP=1 keeps it).
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lt-gpu-check.XXXXXX") || exit 1
LOGS="$WORK/logs"
mkdir -p "$LOGS"
DEVICE=${GPU_CHECK_DEVICE:-cuda}
DATA_ROOT="$ROOT/dist/cuda/data"
REFERENCE="$ROOT/scripts/gpu_check_reference.txt"
SUMMARY="$OUT/summary.tsv"
: >"$SUMMARY"
rm -f "$OUT/bench.jsonl" "$OUT/bench.md" "$OUT/summary.txt" "$OUT/logs.tar.gz"
START_ALL=$(date +%s)
CHECK_BUDGET=${CHECK_BUDGET:-345}
DEADLINE=$((START_ALL + CHECK_BUDGET))
# The golden checks the issue's "done when" counts (both backends, ResNet-32 and ResNet-50).
GOLDEN_CHECKS=90
# The pipeline's accuracy on the device may differ from the CPU's by at most this (points).
ACCURACY_BAR=1.0
# Issue #11's "done when", one tab-separated line per bar: PASS/FAIL/UNMEASURED, bar, measured.
VERDICT="$WORK/verdict.tsv"
: >"$VERDICT"
# The tree the binary was built from (cargo xtask cuda-build writes it).
BUILD=$(head -n 1 "$ROOT/dist/cuda/BUILD" 2>/dev/null)
BUILD=${BUILD:-unknown build (no dist/cuda/BUILD)}
# A binary given as LT is not the one dist/cuda/BUILD describes.
[ -n "${LT:-}" ] && BUILD="the binary LT=$LT (dist/cuda/BUILD, for lt.xz: $BUILD)"
# Set by the selftest step when a fast path failed its checks: the pipeline then avoids it.
PIPELINE_TRAIN_ARGS=""
PIPELINE_SGD_TENSOR_OPS=""

# --- bookkeeping -------------------------------------------------------------------------------

# record STEP STATUS SECONDS RESULT (a row skipped or timed out marks its step as cut short).
record() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SUMMARY"
  case $2 in skipped | timeout) STEP_CUT=1 ;; esac
}

# verdict STATUS BAR MEASURED: a line of the "done when" block.
verdict() {
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$VERDICT"
}

# run_step NAME TIMEOUT LOG CMD...: runs CMD with a time limit (at most what is left of the
# check's budget; skipped when under 10 s are left), output to LOG; prints the status.
run_step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t0 rc left
  t0=$(date +%s)
  left=$((DEADLINE - t0))
  if [ "$left" -lt 10 ]; then
    echo "== $name skipped (the check's budget of ${CHECK_BUDGET} s is used up)"
    echo "skipped: the check's budget of ${CHECK_BUDGET} s was used up" >"$log"
    LAST_STATUS=skipped
    LAST_SECONDS=0
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=5 "$limit" "$@" >"$log" 2>&1
  rc=$?
  LAST_SECONDS=$(($(date +%s) - t0))
  if [ "$rc" -eq 0 ]; then
    LAST_STATUS=ok
  elif [ "$rc" -eq 124 ] || { [ "$rc" -eq 137 ] && [ "$LAST_SECONDS" -ge "$limit" ]; }; then
    LAST_STATUS=timeout
  elif [ "$rc" -eq 137 ]; then
    # SIGKILL before the limit: not the time limit (the kernel's out-of-memory killer, say).
    LAST_STATUS="killed(rc=137)"
  else
    LAST_STATUS="FAIL(rc=$rc)"
  fi
  tail -n 3 "$log" | sed 's/^/   /'
  pack_logs
}

# pack_logs: $OUT/logs.tar.gz from the step logs so far (written aside, then renamed).
pack_logs() {
  tar -czf "$OUT/.logs.tar.gz" -C "$WORK" logs 2>/dev/null && mv -f "$OUT/.logs.tar.gz" "$OUT/logs.tar.gz"
}

# --- 1. binary, libraries, GPU -----------------------------------------------------------------

step_setup() {
  if [ -z "${LT:-}" ]; then
    LT="$WORK/bin/lt"
    mkdir -p "$WORK/bin"
    run_step unpack 30 "$LOGS/unpack.log" python3 -c '
import lzma, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
with lzma.open(src) as f, open(dst, "wb") as o:
    shutil.copyfileobj(f, o)
os.chmod(dst, 0o755)
print(f"{dst}: {os.path.getsize(dst) / 2**20:.1f} MiB")
' "$ROOT/dist/cuda/lt.xz" "$LT"
    record "unpack lt.xz" "$LAST_STATUS" "$LAST_SECONDS" "$(tail -n 1 "$LOGS/unpack.log")"
    # A temporary folder mounted noexec cannot run it (126, before any library is looked for):
    # then it runs from beside the archive.
    "$LT" --help >/dev/null 2>&1
    if [ "$?" -eq 126 ]; then
      mv -f "$LT" "$ROOT/dist/cuda/.lt-unpacked" && LT="$ROOT/dist/cuda/.lt-unpacked" && LT_MOVED=1
      record "lt moved" WARN 0 "to $LT: $WORK cannot run programs"
    fi
  else
    record "unpack lt.xz" skipped 0 "LT=$LT given"
  fi
  # cuBLAS, cuRAND, NVRTC and cuDNN come from the PyTorch installation's NVIDIA wheels.
  local nv folders
  nv=$(python3 - <<'PY' 2>"$LOGS/ld_library_path.err"
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
try:  # wherever the `nvidia` namespace package is imported from (PYTHONPATH, a venv)
    import nvidia
    roots += [os.path.dirname(p) for p in nvidia.__path__]
except ImportError:
    pass
dirs = set()
for sp in roots:
    for so in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
PY
)
  if [ -n "$nv" ]; then export LD_LIBRARY_PATH="${nv}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
  echo "${LD_LIBRARY_PATH:-}" >"$LOGS/ld_library_path.txt"
  # The driver compiles candle's PTX for the GPU when a process first loads it, and caches the
  # result: beside dist/cuda on a GPU (git-ignored; the check's second call finds it), else in
  # the work directory, so that a home that cannot be written does not make every process of
  # the check compile again; large enough for all of candle's kernels.
  CUDA_CACHE_PATH="$WORK/cuda-cache"
  if [ "$DEVICE" = cuda ] && mkdir -p "$ROOT/dist/.cuda-cache" 2>/dev/null && [ -w "$ROOT/dist/.cuda-cache" ]; then
    CUDA_CACHE_PATH="$ROOT/dist/.cuda-cache"
  fi
  export CUDA_CACHE_PATH CUDA_CACHE_MAXSIZE=4294967296
  folders=$(printf '%s' "$nv" | tr ':' '\n' | grep -c .)
  record "CUDA libraries" "$([ "$folders" -gt 0 ] && echo ok || echo WARN)" 0 \
    "$folders folder(s) of PyTorch's NVIDIA wheels on LD_LIBRARY_PATH (ld_library_path.txt)"
  run_step nvidia-smi 15 "$LOGS/gpu.txt" nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  if [ "$LAST_STATUS" = ok ]; then
    GPU_NAME=$(head -n 1 "$LOGS/gpu.txt")
    GPU_SMI_OK=1
  fi
  record "nvidia-smi" "$LAST_STATUS" "$LAST_SECONDS" "$(head -n 1 "$LOGS/gpu.txt")"
  run_step ldd 15 "$LOGS/ldd.txt" ldd "$LT"
  local missing
  missing=$(grep -c "not found" "$LOGS/ldd.txt")
  grep "not found" "$LOGS/ldd.txt" >"$LOGS/ldd_missing.txt"
  if [ "$LAST_STATUS" = ok ] && [ "$missing" -gt 0 ]; then LAST_STATUS=FAIL; fi
  record "ldd" "$LAST_STATUS" "$LAST_SECONDS" "$missing missing librar(ies)"
}

# --- 2. golden checks --------------------------------------------------------------------------

# kind_status LABEL GROUP_RE FAIL_RE: KIND_LINE is selftest.txt's line "N/M LABEL passed" (with
# the count of failed group processes, if any; else says there is none). KIND_FAILED is 1 on
# evidence that a check of the kind failed: N < M, a line matching FAIL_RE (a failed check or
# run of that kind), or a failed process of the groups GROUP_RE (lt selftest --only GROUP: "FAIL
# GROUP: its process ..."); only that evidence makes the pipeline avoid a path, not a line
# missing because the step stopped before it. KIND_STATUS: FAIL on evidence (or M = 0, or the
# step failed before any kind's line), "not run" without its line, else ok.
kind_status() {
  local file="$LOGS/selftest.txt" n m
  KIND_LINE=$(grep -E "^[0-9]+/[0-9]+ $1 passed" "$file" | tail -n 1)
  n=${KIND_LINE%%/*}
  m=${KIND_LINE#*/}
  m=${m%% *}
  KIND_STATUS=ok KIND_FAILED=0
  if { [ -n "$KIND_LINE" ] && [ "$n" != "$m" ]; } || grep -qE "$3|^FAIL $2: " "$file"; then
    KIND_FAILED=1
  fi
  if [ "$KIND_FAILED" = 1 ] || { [ -n "$KIND_LINE" ] && [ "$m" = 0 ]; }; then
    KIND_STATUS=FAIL
  elif [ -z "$KIND_LINE" ]; then
    # Not reached: the step stopped on time (or was skipped) before this kind. A step that
    # failed before any kind's line (the device did not open) failed them all.
    KIND_STATUS="not run"
    case $LAST_STATUS in
      ok | timeout | skipped) ;;
      *) grep -qE "^[0-9]+/[0-9]+ .* passed" "$file" || KIND_STATUS=FAIL ;;
    esac
  fi
  local crashed
  crashed=$(grep -cE "^FAIL $2: its process" "$file")
  [ "$crashed" -gt 0 ] && KIND_LINE="${KIND_LINE:-no summary line}; $crashed group process(es) failed (selftest.txt)"
  KIND_LINE=${KIND_LINE:-no summary line (see selftest.txt)}
  return 0
}

# kind_record ROW [SECONDS]: the summary row of the last kind_status.
kind_record() {
  record "$1" "$KIND_STATUS" "${2:-0}" "$KIND_LINE"
}

step_selftest() {
  # The goldens are strict f32 (PyTorch with TF32 off). Stock candle's cuDNN convolutions use
  # cuDNN's default math, which is TF32 on Hopper (28 of its 45 checks then miss the f32
  # tolerances by up to 6e-2, seen on an H200); NVIDIA_TF32_OVERRIDE=0 turns TF32 off in every
  # NVIDIA library of the process. The project's own path uses FMA math unless --tf32 is given.
  NVIDIA_TF32_OVERRIDE=0 CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG=stderr \
    run_step "selftest --device $DEVICE" 100 "$LOGS/selftest.txt" "$LT" selftest --device "$DEVICE" --plain \
    --group-timeout 45
  # The golden checks' own verdict: exit 1 (a check of any kind failed) leaves it to their line;
  # a timeout or a crash of the whole step shows as it is.
  kind_status "checks" 'golden-[a-z0-9-]+' '^FAIL resnet(32|50) (Fast|Candle)'
  [ "$LAST_STATUS" = ok ] || [ "$LAST_STATUS" = "FAIL(rc=1)" ] || KIND_STATUS=$LAST_STATUS
  kind_record "selftest (both backends)" "$LAST_SECONDS"
  local golden
  case $KIND_LINE in
    "$GOLDEN_CHECKS/$GOLDEN_CHECKS checks passed"*) golden=PASS ;;
    [0-9]*/[0-9]*" checks passed"*) golden=FAIL ;;
    *) case $KIND_STATUS in timeout | skipped | "not run") golden=UNMEASURED ;; *) golden=FAIL ;; esac ;;
  esac
  verdict "$golden" "$GOLDEN_CHECKS/$GOLDEN_CHECKS golden checks on $DEVICE, both backends" "$KIND_LINE"
  # bf16 mixed precision against f32 on the device (bounds from PyTorch's bf16 autocast).
  kind_status "mixed-precision checks" mixed '^FAIL .*bf16( vs f32|: could not run)'
  kind_record "selftest bf16 vs f32"
  # The taped executor (backward pass walked by hand) against candle's autograd, f32 and bf16.
  kind_status "taped-executor checks" taped '^FAIL .* taped'
  kind_record "selftest taped vs autograd"
  # Should the taped executor (the training default on CUDA) fail its checks, the pipeline trains
  # through candle's autograd instead, so that its accuracy is still measured (and says so).
  if [ "$KIND_FAILED" = 1 ]; then PIPELINE_TRAIN_ARGS="--autograd"; fi
  # A frozen snapshot (channels-last filters kept on CUDA) against its model's evaluation.
  kind_status "frozen-snapshot checks" frozen '^FAIL .* frozen'
  kind_record "selftest frozen snapshot"
  # SGD's in-place CUDA step (one launch per 96 parameters) against its tensor ops, bit for bit.
  kind_status "optimiser checks" optimiser '^FAIL SGD'
  kind_record "selftest SGD passes"
  # Likewise SGD's CUDA kernels: the pipeline then updates with the tensor ops.
  if [ "$KIND_FAILED" = 1 ]; then PIPELINE_SGD_TENSOR_OPS=1; fi
  # Training steps run twice from one seed (the device's default path, SGD included): the same
  # bits? Where not, selftest.txt's line names the parameter that differs most.
  kind_status "repeatability checks" repeatable '^FAIL .* repeated'
  kind_record "selftest repeatable training"
  # The loader's batches, made on the device by its worker threads (each with a CUDA stream of its
  # own) and read the moment they arrive, against the host's: complete, the same bits?
  kind_status "loader checks" loader '^FAIL loader'
  kind_record "selftest loader batches"
  # Ops cuDNN refused run on candle's kernels, or through cuDNN in f32 (a bf16 op; same results,
  # slower); each is warned about once.
  # Each group's process warns once per op (with the first input's shape; the convolution once
  # per shape): count distinct ops, named by what comes before " for [".
  local fallbacks
  fallbacks=$(sed -n -e 's/.*cuDNN refused the convolution .*/the convolution/p' \
    -e 's/.*cuDNN refused \([^[]*\) for \[.*/\1/p' "$LOGS/selftest.txt" | sort -u | wc -l)
  record "cuDNN refusals (fallbacks)" "$([ "$fallbacks" -eq 0 ] && echo ok || echo WARN)" 0 \
    "$fallbacks op kind(s) run another way (grep \"cuDNN refused\" selftest.txt)"
  # Ops whose cuDNN call ran out of device memory (not a refusal: the other way ran that once;
  # each process warns once per op, later ones at debug level).
  local oom
  oom=$(sed -n 's/.*cuDNN ran out of memory in \(.*\) for \[.*/\1/p' "$LOGS/selftest.txt" | sort -u | wc -l)
  record "cuDNN out of memory" "$([ "$oom" -eq 0 ] && echo ok || echo WARN)" 0 \
    "$oom op kind(s) ran out of memory at least once (grep \"cuDNN ran out of memory\" selftest.txt)"
}

# --- 4. benchmark, and 6. what explains it (bench-more) -------------------------------------

# peak_sampler_start NAME / peak_sampler_stop: PEAK is the highest memory.used (MiB) nvidia-smi
# reported meanwhile, empty without a number. Call both in this shell (not in $(...)), so that
# the sampler is its child: stopped, waited for, killed should it not stop.
peak_sampler_start() {
  SAMPLES="$WORK/mem-$1.txt"
  : >"$SAMPLES"
  if [ "${GPU_SMI_OK:-0}" = 1 ] && [ "$DEVICE" != cpu ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 >"$SAMPLES" 2>/dev/null &
    SAMPLER=$!
  else
    SAMPLER=
  fi
}
peak_sampler_stop() {
  if [ -n "$SAMPLER" ]; then
    kill "$SAMPLER" 2>/dev/null
    local i
    for i in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 "$SAMPLER" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$SAMPLER" 2>/dev/null
    wait "$SAMPLER" 2>/dev/null
  fi
  PEAK=$(grep -E '^ *[0-9]+(\.[0-9]+)? *$' "$SAMPLES" | sort -n | tail -n 1 | tr -d ' ')
}

# bench_project NAME TF32(0|1) ARGS...: one `lt bench backbone` run, JSON appended to bench.jsonl.
bench_project() {
  local name=$1 tf32=$2
  shift 2
  bench_time "bench $name" 45 || return
  local extra=()
  [ "$tf32" = 1 ] && extra+=(--tf32)
  peak_sampler_start "$name"
  run_step "bench $name" "$LIMIT" "$LOGS/bench-$name.log" "$LT" bench backbone --device "$DEVICE" "$@" "${extra[@]}"
  peak_sampler_stop
  local json result="no result"
  json=$(grep '^{' "$LOGS/bench-$name.log" | tail -n 1)
  if [ -n "$json" ]; then
    python3 -c '
import json, sys
d = json.loads(sys.argv[1])
d["impl"] = sys.argv[2]
if sys.argv[3]:
    d["nvidia_smi_peak_mib"] = float(sys.argv[3])
print(json.dumps(d))' "$json" "$name" "${PEAK:-}" >>"$OUT/bench.jsonl"
    # The host's share: the time a step took to enqueue its work, of the whole step (near 100%:
    # the step waits on launches and the host, not on the GPU).
    result=$(python3 -c '
import json, sys
d = json.loads(sys.argv[1])
host = d.get("median_host_seconds")
share = ", host %.0f%% of the step" % (100 * host / d["median_step_seconds"]) if host else ""
print("%.0f img/s%s" % (d["images_per_sec"], share))' "$json")
  fi
  record "bench $name" "$LAST_STATUS" "$LAST_SECONDS" "$result"
}

# bench_default NAME TF32(0|1) ARGS...: bench_project, unless this call's bench.jsonl has the row.
bench_default() {
  grep -qF "\"impl\": \"$1\"" "$OUT/bench.jsonl" 2>/dev/null || bench_project "$@"
}

# bench_torch NAME ARGS...: the PyTorch variants of one configuration in one process.
bench_torch() {
  local name=$1
  shift
  # PyTorch times four variants, each with cudnn.benchmark's search first: ResNet-50 needs longer.
  bench_time "bench $name" "${TORCH_LIMIT:-60}" || return
  run_step "bench $name" "$LIMIT" "$LOGS/bench-$name.log" python3 scripts/bench_torch.py --device "$DEVICE" \
    --variants "${TORCH_VARIANTS:-f32-strict-cl,f32,f32-cl,bf16-cl}" "$@"
  grep '^{' "$LOGS/bench-$name.log" >>"$OUT/bench.jsonl"
  # A variant that failed prints its error as a JSON line too: count the measured ones.
  local all measured status=$LAST_STATUS
  all=$(grep -c '^{' "$LOGS/bench-$name.log")
  measured=$(grep '^{' "$LOGS/bench-$name.log" | grep -vc '"error"')
  [ "$status" = ok ] && [ "$measured" -lt "$all" ] && status=FAIL
  record "bench $name" "$status" "$LAST_SECONDS" "$measured of $all variant(s) measured"
}

# The benchmark's configurations: ResNet-32 at batch 128 (CIFAR) and ResNet-50 at batch 256 (224).
R32=(--arch resnet32 --classes 10 --batch 128 --size 32 --steps 20 --warmup 5)
R50=(--arch resnet50 --classes 1000 --batch 256 --size 224 --steps 8 --warmup 3)

# reserve_for STEP SECONDS: SECONDS when this call runs STEP, else 0.
reserve_for() {
  case " $STEPS " in *" $1 "*) echo "$2" ;; *) echo 0 ;; esac
}

# bench_time ROW WANT: LIMIT, the time row ROW may take of the benchmark's budget (at most
# WANT); when that is used up, records ROW as skipped and fails.
bench_time() {
  local left=$((BENCH_DEADLINE - $(date +%s)))
  if [ "$left" -lt 10 ]; then
    record "$1" skipped 0 "bench time used up"
    return 1
  fi
  LIMIT=$((left < $2 ? left : $2))
}

# The project (f32, TF32, bf16) against PyTorch, ResNet-32 and ResNet-50, training and eval. The
# rows the issue's bars read come first (the project's TF32 step, PyTorch's default f32 math,
# against PyTorch's variants: ResNet-32 train and eval, then ResNet-50 train), so that a budget
# cut takes the project's strict-f32 and bf16 rows, which explain them.
step_bench() {
  # Leaving 45 s for the loader when this call runs it; the extra rows (step_bench_more) get
  # what is left after it.
  BENCH_DEADLINE=$((DEADLINE - $(reserve_for loader 45)))
  for mode in train eval; do
    bench_project "resnet32-$mode-project-tf32" 1 "${R32[@]}" --mode "$mode"
    bench_torch "resnet32-$mode-pytorch" "${R32[@]}" --mode "$mode"
  done
  # ResNet-50 training (its eval, which the issue sets no ratio for, is bench-more's).
  bench_r50 train
  for mode in train eval; do
    bench_project "resnet32-$mode-project-bf16" 0 "${R32[@]}" --mode "$mode" --precision bf16
    bench_project "resnet32-$mode-project-f32" 0 "${R32[@]}" --mode "$mode"
  done
  bench_r50_rest train
  bench_table
}

# bench_r50 MODE: the project's ResNet-50 TF32 row and PyTorch's, its best f32 layout first.
bench_r50() {
  bench_project "resnet50-$1-project-tf32" 1 "${R50[@]}" --mode "$1"
  # PyTorch's variants in the order of their worth should the time run out (each prints its
  # row when done): channels-last is its best f32 layout for ResNet-50 (3,149 against 2,213
  # img/s NCHW on an H200), then bf16 autocast, which the issue compares the project's bf16 with.
  TORCH_LIMIT=110 TORCH_VARIANTS=f32-cl,bf16-cl,f32,f32-strict-cl bench_torch "resnet50-$1-pytorch" \
    "${R50[@]}" --mode "$1"
}

# bench_r50_rest MODE: the project's other ResNet-50 rows, bf16 mixed precision and strict f32.
bench_r50_rest() {
  bench_project "resnet50-$1-project-bf16" 0 "${R50[@]}" --mode "$1" --precision bf16
  bench_project "resnet50-$1-project-f32" 0 "${R50[@]}" --mode "$1"
}

# bench_table: bench.md from the rows so far.
bench_table() {
  python3 scripts/bench_table.py "$OUT/bench.jsonl" >"$OUT/bench.md" 2>"$LOGS/bench_table.err"
}

# profile_result LOG DIGITS: a profiled step's time and its six costliest ops (ms with DIGITS
# decimals) from a `lt bench backbone --profile` log.
profile_result() {
  python3 -c '
import json, sys
d = json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])["profile"]
ms = "%%s %%.%sf ms" % sys.argv[2]
print("step %.0f ms; ops: " % d["step_ms"] + ", ".join(ms % (o["op"], o["ms"]) for o in d["ops"][:6]))
' "$1" "$2" 2>/dev/null || echo "no profile"
}

# profile NAME WANT DIGITS BATCH ARGS...: one profiled TF32 training step at batch BATCH of `lt
# bench backbone ARGS` (at most WANT s of the benchmark's budget), its row with times of DIGITS
# decimals.
profile() {
  local name=$1 want=$2 digits=$3 batch=$4
  shift 4
  bench_time "profile $name train b$batch TF32" "$want" || return
  run_step "profile $name train" "$LIMIT" "$LOGS/profile-$name.log" "$LT" bench backbone --device "$DEVICE" \
    "$@" --batch "$batch" --steps 3 --warmup 2 --mode train --tf32 --profile
  record "profile $name train b$batch TF32" "$LAST_STATUS" "$LAST_SECONDS" \
    "$(profile_result "$LOGS/profile-$name.log" "$digits")"
}

# What the settings are worth, where a step spends its time, and what the taped executor is worth
# against candle's autograd (in that order, so that a budget cut takes the last).
step_bench_more() {
  # Stage 2 at ImageNet-LT size, when this call runs it, keeps 100 s: the autograd rows matter less.
  BENCH_DEADLINE=$((DEADLINE - 10 - $(reserve_for retrain 100)))
  # The default step each row is compared with, measured in this call: step 4's row, or now.
  bench_default resnet32-train-project-tf32 1 "${R32[@]}" --mode train
  # What keeping freed device memory in the pool is worth: the same ResNet-32 TF32 training step
  # with the driver's default (freed memory released at every synchronisation; prepare_device).
  LT_CUDA_RELEASE_FREED=1 bench_project resnet32-train-tf32-pool-released 1 "${R32[@]}" --mode train
  # What SGD's in-place CUDA kernel is worth: the same step with its tensor ops (nine kernels
  # and allocations per parameter instead of one launch for all 95).
  LT_SGD_TENSOR_OPS=1 bench_project resnet32-train-tf32-sgd-tensor-ops 1 "${R32[@]}" --mode train
  # What cuDNN's persistent batch-norm mode (f32 training's default, as PyTorch's for channels-last)
  # is worth: the same training steps with its spatial mode.
  LT_CUDNN_BN_SPATIAL=1 bench_project resnet32-train-tf32-bn-spatial 1 "${R32[@]}" --mode train
  bench_default resnet50-train-project-tf32 1 "${R50[@]}" --mode train
  LT_CUDNN_BN_SPATIAL=1 bench_project resnet50-train-tf32-bn-spatial 1 "${R50[@]}" --mode train
  # Where a ResNet-32 training step (taped executor) spends its time, forward and backward.
  profile resnet32 30 1 128 --arch resnet32 --classes 10 --size 32 --taped
  # Where a ResNet-50 training step spends its time: each op between device syncs.
  profile resnet50 60 0 64 --arch resnet50 --classes 1000 --size 224
  # ResNet-50's eval against PyTorch (the issue sets it no ratio), the main table's last row.
  bench_r50 eval
  bench_r50_rest eval
  # Last, as they matter least: the training steps through candle's autograd (the default is
  # the taped executor), bench.md's second table.
  for cfg in R32 R50; do
    local name args
    [ "$cfg" = R32 ] && name=resnet32 && args=("${R32[@]}")
    [ "$cfg" = R50 ] && name=resnet50 && args=("${R50[@]}")
    bench_project "$name-train-project-tf32-autograd" 1 "${args[@]}" --mode train --autograd
    bench_default "$name-train-project-bf16" 0 "${args[@]}" --mode train --precision bf16
    bench_project "$name-train-project-bf16-autograd" 0 "${args[@]}" --mode train --precision bf16 --autograd
  done
  bench_table
}

# --- 3. Fashion-MNIST-LT pipeline --------------------------------------------------------------

step_pipeline() {
  local limit=110
  local run="$WORK/fmnist"
  rm -rf "$run"
  mkdir -p "$run"
  # A short stage 1 so that the whole pipeline fits the check's time budget.
  cat >"$run/preset.toml" <<'TOML'
name = "gpu-check-fmnist"
description = "Fashion-MNIST-LT (imbalance 100), CIFAR ResNet-20, 6 epochs with SWA from 4: the GPU check's short pipeline"
seeds = 1

[data]
dataset = "fmnist-lt"
imbalance = 100.0

[train]
arch = "resnet20"
epochs = 6
batch_size = 128
lr = 0.1
weight_decay = 5e-4
warmup_epochs = 1

[train.swa]
start = 4
lr = 0.05
rank = 4

[extract]
samples = 4
scale = 0.5

[retrain]
epochs = 10
batch_size = 512
lr = 0.1
weight_decay = 5e-4

[report]
TOML
  local fallback=""
  [ -n "$PIPELINE_TRAIN_ARGS" ] && fallback=" [lt train $PIPELINE_TRAIN_ARGS: the taped checks did not pass]"
  [ -n "$PIPELINE_SGD_TENSOR_OPS" ] && fallback="$fallback [LT_SGD_TENSOR_OPS=1: the SGD check did not pass]"
  run_step "fmnist-lt pipeline ($DEVICE)" "$limit" "$LOGS/pipeline.log" \
    env TRAIN_ARGS="$PIPELINE_TRAIN_ARGS" ${PIPELINE_SGD_TENSOR_OPS:+LT_SGD_TENSOR_OPS=1} \
    bash scripts/fmnist_pipeline.sh "$LT" "$DEVICE" "$run" "$DATA_ROOT"
  # value FILE KEY: the value of KEY in a `key value` file.
  value() { awk -v k="$2" '$1 == k { print $2 }' "$1" 2>/dev/null; }
  local acc ref swa swa_ref
  acc=$(value "$run/result.txt" srepr_accuracy)
  ref=$(value "$REFERENCE" srepr_accuracy)
  swa=$(value "$run/result.txt" swa_accuracy)
  swa_ref=$(value "$REFERENCE" swa_accuracy)
  local verdict="SRepr ${acc:-?}% (CPU ${ref:-?}%"
  if [ -n "$acc" ] && [ -n "$ref" ]; then
    verdict="$verdict, $(awk -v a="$acc" -v r="$ref" 'BEGIN { printf "%+.2f points", a - r }')"
  fi
  # What rounding alone does: the CPU's two kernel sets differ by this much.
  local other
  other=$(value "$REFERENCE" srepr_accuracy_avx2)
  if [ -n "$other" ] && [ -n "$ref" ]; then
    verdict="$verdict; the CPU's AVX2 kernels ${other}%"
  fi
  verdict="$verdict); SWA ${swa:-?}% (CPU ${swa_ref:-?}%); stage 1 $(value "$run/result.txt" seconds_train) s$fallback"
  record "fmnist-lt 6 epochs + SRepr" "$LAST_STATUS" "$LAST_SECONDS" "$verdict"
  local status=UNMEASURED
  if [ -n "$acc" ] && [ -n "$ref" ]; then
    status=$(awk -v a="$acc" -v r="$ref" -v bar="$ACCURACY_BAR" \
      'BEGIN { d = a - r; if (d < 0) d = -d; print (d <= bar ? "PASS" : "FAIL") }')
  elif [ "$LAST_STATUS" != ok ] && [ "$LAST_STATUS" != skipped ]; then
    status=FAIL
  fi
  verdict "$status" "Fashion-MNIST-LT on $DEVICE: SRepr within $ACCURACY_BAR point of the CPU${fallback:+ (on a fallback path)}" \
    "SRepr ${acc:-?}% against ${ref:-?}% ($LAST_STATUS)"
}

# --- 5. the loader -----------------------------------------------------------------------------

# loader_result LOG: images/s of a `lt bench loader` or bench_torch_loader.py log.
loader_result() {
  python3 -c '
import json, sys
d = json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])
print("%.0f img/s (%s workers, batch %s)" % (d["images_per_sec"], d["workers"], d["batch"]))
' "$1" 2>/dev/null || echo "no result"
}

# Whether the loader keeps up with the GPU: batches made on the device (bytes copied there and
# normalised), CIFAR-size with the training default of 2 workers, and generated ImageNet-size
# JPEGs with the ImageNet-LT preset's 12 workers against torchvision's DataLoader (pinned memory)
# on the same files. The JPEGs are written outside $OUT (about 50 MB) and removed afterwards.
step_loader() {
  local jpegs="${TMPDIR:-/tmp}/lt-gpu-check-jpegs-$$"
  run_step "loader cifar ($DEVICE)" 30 "$LOGS/loader-cifar.log" "$LT" bench loader --device "$DEVICE" --workers 2
  record "loader cifar-size 2 workers" "$LAST_STATUS" "$LAST_SECONDS" "$(loader_result "$LOGS/loader-cifar.log")"
  run_step "loader jpeg ($DEVICE)" 40 "$LOGS/loader-jpeg.log" "$LT" bench loader --device "$DEVICE" \
    --data-root "$jpegs" --generate-jpegs 512 --workers 12 --batches 40
  record "loader 224 jpeg (project)" "$LAST_STATUS" "$LAST_SECONDS" "$(loader_result "$LOGS/loader-jpeg.log")"
  if [ -d "$jpegs" ]; then
    run_step "loader jpeg (torchvision)" 40 "$LOGS/loader-jpeg-torch.log" python3 scripts/bench_torch_loader.py \
      --device "$DEVICE" --folder "$jpegs" --workers 12 --batches 40
    record "loader 224 jpeg (torchvision)" "$LAST_STATUS" "$LAST_SECONDS" "$(loader_result "$LOGS/loader-jpeg-torch.log")"
  fi
  rm -rf "$jpegs"
}

# --- 7. stage 2 at ImageNet-LT size ------------------------------------------------------------

# retrain_result LOG: seconds per epoch, in all, and the file's generation from a `lt bench
# retrain` log.
retrain_result() {
  python3 -c '
import json, re, sys
text = open(sys.argv[1]).read()
d = json.loads([l for l in text.splitlines() if l.startswith("{")][-1])
made = re.search(r"generated .* in ([0-9.]+) s", text)
kept = d.get("resident_mib")
kept = "" if kept is None else "; %.0f MiB of features kept on the device%s" % (kept, "" if kept else " (they did not fit)")
print("%.1f s per epoch, %d epochs in %.1f s (reading the features onto the device included)%s%s"
      % (d["seconds_per_epoch"], d["epochs"], d["seconds"], kept, "; file written in %s s" % made.group(1) if made else ""))
' "$1" 2>/dev/null || echo "no result"
}

# Stage 2 on the device at ImageNet-LT size, the features kept there (each training split read
# once). For scale: an H200 took 4.9 s per SRepr epoch on 2026-11-28, when every step decoded its
# rows on the host and uploaded them.
step_retrain() {
  run_step "retrain imagenet-size ($DEVICE)" 120 "$LOGS/retrain-imagenet.log" "$LT" bench retrain \
    --size imagenet --method srepr --epochs 3 --dir "$WORK/retrain" --device "$DEVICE"
  record "stage 2 SRepr ImageNet-LT size" "$LAST_STATUS" "$LAST_SECONDS" "$(retrain_result "$LOGS/retrain-imagenet.log")"
  rm -rf "$WORK/retrain"
}

# --- 8. CPU kernels on this machine's CPU ------------------------------------------------------

# cpu_result LOG: kernels, features and images/s from a `lt bench backbone` or bench_torch.py log.
cpu_result() {
  python3 -c '
import json, sys
d = json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])
who = d.get("kernels") or ("torch " + d.get("torch", "?"))
feats = " ".join(d.get("cpu_features", []))
print("%.0f img/s (%s%s)" % (d["images_per_sec"], who, "; " + feats if feats else ""))
' "$1" 2>/dev/null || echo "no result"
}

step_cpu() {
  local threads r32
  threads=$(nproc)
  r32=(--arch resnet32 --classes 10 --batch 128 --size 32 --steps 3 --warmup 1)
  for mode in train eval; do
    for k in avx512 avx2; do
      run_step "cpu $mode ($k)" 30 "$LOGS/cpu-$mode-$k.log" env LT_KERNELS=$k "$LT" bench backbone --device cpu \
        "${r32[@]}" --mode "$mode"
      record "cpu resnet32 $mode b128 LT_KERNELS=$k" "$LAST_STATUS" "$LAST_SECONDS" "$(cpu_result "$LOGS/cpu-$mode-$k.log")"
    done
    run_step "cpu $mode (pytorch)" 40 "$LOGS/cpu-$mode-torch.log" python3 scripts/bench_torch.py --device cpu \
      "${r32[@]}" --mode "$mode" --threads "$threads" --channels-last
    record "cpu resnet32 $mode b128 PyTorch CL" "$LAST_STATUS" "$LAST_SECONDS" "$(cpu_result "$LOGS/cpu-$mode-torch.log")"
  done
}

# --- main ------------------------------------------------------------------------------------------

# commands STEPS: the calls that run STEPS, each within one budget: those of the first call's
# steps, then those of the second's (named done-when and more when they are all of it).
commands() {
  local part group name out=""
  for group in DONE_WHEN MORE; do
    part=""
    for s in ${!group}; do
      case " $1 " in *" $s "*) part="$part $s" ;; esac
    done
    part=${part# }
    [ -n "$part" ] || continue
    name="\"$part\""
    [ "$part" = "$DONE_WHEN" ] && name=done-when
    [ "$part" = "$MORE" ] && name=more
    out="$out${out:+; then }GPU_CHECK_STEPS=$name bash scripts/gpu_check.sh"
  done
  printf '%s' "$out"
}

# done_when: issue #11's "done when", one line per bar, when this call ran any of its steps (the
# benchmark's from bench.jsonl, see scripts/bench_table.py --verdict).
done_when() {
  local s ran=""
  for s in $DONE_WHEN; do
    case " $STEPS " in *" $s "*) ran=1 ;; esac
  done
  [ -n "$ran" ] || return 0
  case " $STEPS " in *" bench "*)
    python3 scripts/bench_table.py --verdict "$OUT/bench.jsonl" >>"$VERDICT" 2>>"$LOGS/bench_table.err" ;;
  esac
  echo
  echo "Done when (issue #11; $BUILD on ${GPU_NAME:-no GPU}):"
  while IFS=$'\t' read -r status bar measured; do
    printf '%-11s %-62s %s\n' "$status" "$bar" "$measured"
  done <"$VERDICT"
}

# The setup always runs, then the call's steps.
step_setup
# CUT: the call's steps with a row skipped or timed out (STEP_CUT, set by record).
CUT=""
for s in $STEPS; do
  STEP_CUT=0
  "step_${s//-/_}"
  [ "$STEP_CUT" = 1 ] && CUT="$CUT $s"
done
CUT=${CUT# }

TOTAL=$(($(date +%s) - START_ALL))
{
  if [ -s "$OUT/bench.md" ]; then
    echo
    echo "Benchmark ($DEVICE, ${GPU_NAME:-no GPU}):"
    cat "$OUT/bench.md"
  fi
  echo
  echo "GPU check summary ($DEVICE; ${GPU_NAME:-no GPU}; ${TOTAL} s; outputs in $OUT)"
  echo "Binary: $BUILD"
  echo "Fashion-MNIST-LT step: a 6-epoch stage 1 (SWA from epoch 4), 4 SWAG samples, SRepr for 10 epochs (not the paper's protocol)."
  printf '%-42s %-13s %7s  %s\n' step status seconds result
  while IFS=$'\t' read -r step status secs result; do
    printf '%-42s %-13s %7s  %s\n' "$step" "$status" "$secs" "$result"
  done <"$SUMMARY"
  echo "Step logs: $OUT/logs.tar.gz (tar -xzf; cuDNN's own warnings are in logs/selftest.txt)"
  [ -n "$CUT" ] && echo "Cut short in this call (a row skipped or timed out): $CUT. To run them" \
    "again: $(commands "$CUT")"
  [ -n "$OTHER" ] && echo "Not in this call: $OTHER ($(commands "$OTHER"))"
  done_when
} | tee "$OUT/summary.txt"
pack_logs
if [ "${GPU_CHECK_KEEP:-0}" = 1 ]; then
  echo "Work directory kept: $WORK"
else
  rm -rf "$WORK"
  if [ "${LT_MOVED:-0}" = 1 ]; then rm -f "$LT"; fi
fi
