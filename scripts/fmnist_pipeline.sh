#!/usr/bin/env bash
# The short Fashion-MNIST-LT pipeline of the GPU check (and of its CPU reference):
#
#   bash scripts/fmnist_pipeline.sh LT DEVICE RUN_DIR DATA_ROOT
#
# RUN_DIR must hold preset.toml (gpu_check.sh writes it). Runs stage 1 (SGD + SWA/SWAG), the
# extraction of 4 SWAG samples, SRepr (10 epochs) and its evaluation, and writes
# RUN_DIR/result.txt: wall seconds per stage, the stage-1 test accuracies and SRepr's accuracy.
# TRAIN_ARGS (environment, words) are added to `lt train`'s flags (gpu_check.sh: `--autograd` when
# the taped executor's checks failed on the device).
set -euo pipefail
LT=$1
DEVICE=$2
RUN=$3
DATA_ROOT=$4
RESULT="$RUN/result.txt"
: >"$RESULT"

timed() {
  local name=$1 t0
  shift
  t0=$(date +%s.%N)
  "$@"
  awk -v a="$t0" -v b="$(date +%s.%N)" -v n="$name" 'BEGIN { printf "seconds_%s %.1f\n", n, b - a }' >>"$RESULT"
}

# The data set: the carried Debian files (dist/cuda/data/fashion-mnist), else the system's.
DATA_ARGS=()
if [ -e "$DATA_ROOT/fashion-mnist/train-images-idx3-ubyte.gz" ]; then
  DATA_ARGS=(--data-root "$DATA_ROOT")
fi

read -r -a EXTRA <<<"${TRAIN_ARGS:-}"
timed train "$LT" --plain train --preset-file "$RUN/preset.toml" --seed 0 --out "$RUN/stage1" \
  --device "$DEVICE" "${DATA_ARGS[@]}" "${EXTRA[@]}" | tee "$RUN/train.txt"
# Stage-1 accuracy lines: `SGD ... <All> ...` (the fifth field is the overall accuracy).
awk '/^(SGD|SWA) / {print tolower($1) "_accuracy " $5}' "$RUN/train.txt" >>"$RESULT"
timed extract "$LT" --plain extract --run "$RUN/stage1" --samples 4 --seed 0 --device "$DEVICE"
timed srepr "$LT" --plain retrain --features "$RUN/stage1/features.safetensors" --backbone swa --method srepr \
  --epochs 10 --batch-size 512 --seed 0 --out "$RUN/srepr" --device "$DEVICE"
"$LT" --plain eval --predictions "$RUN/srepr/predictions.safetensors" --split-info "$RUN/stage1/split.safetensors" \
  | tee "$RUN/eval.txt"
# The table row after the header: method, Many, Medium, Few, All, NLL, ECE (the method label may
# hold spaces, so fields are counted from the end).
awk 'NR == 2 {print "srepr_accuracy " $(NF-2); print "srepr_many " $(NF-5); print "srepr_few " $(NF-3)}' \
  "$RUN/eval.txt" >>"$RESULT"
cat "$RESULT"
