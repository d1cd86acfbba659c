#!/usr/bin/env bash
# The training paths only a GPU runs — fp16 autocast + GradScaler, bf16, channels_last, torch.compile and
# NCCL (torchrun) — executed on the bundled digits (written by `edgevit data digits`: no download), each
# trained 2 epochs then resumed for a third; one table at the end. About 3-5 minutes on one GPU.
#
#   make setup && benchmarks/gpu_check.sh            # all GPUs of the machine for the NCCL run
#   DEVICE=cpu ONLY="bf16" benchmarks/gpu_check.sh   # the script's own plumbing, on a CPU
#
# Each row: the run's last val top-1, its images/s and share of time waiting for data (metrics.jsonl), and
# whether `--resume auto` continued it (epoch 3 present). A failing path prints FAILED and its log's tail.
# Then (THROUGHPUT=1, the default) the training-speed report of benchmarks/train_throughput.py on the same device:
# forward / backward / optimizer step per model x form (eager, bf16, channels_last+bf16, compile), 224 px.
set -uo pipefail
cd "$(dirname "$0")/.."
EV=${EV:-.venv/bin/edgevit}
TORCHRUN=${TORCHRUN:-.venv/bin/torchrun}
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-out/gpu_check}
NGPU=${NGPU:-$($PY -c "import torch; print(max(torch.cuda.device_count(), 1))")}
ONLY=${ONLY:-"fp32 fp16 bf16 channels_last compile nccl"}
THROUGHPUT=${THROUGHPUT:-1}
TT_BATCH=${TT_BATCH:-$([ "$DEVICE" = cuda ] && echo 256 || echo 8)}

rm -rf "$OUT" && mkdir -p "$OUT"
$EV data digits --out "$OUT/digits" >/dev/null || exit 1
COMMON=(train --config configs/digits_demo.yaml --data "$OUT/digits" --device "$DEVICE" --workers 4
        --no-progress)

declare -A FLAGS=(
  [fp32]="--amp none"
  [fp16]="--amp float16"
  [bf16]="--amp bfloat16"
  [channels_last]="--amp bfloat16 --channels-last"
  [compile]="--amp bfloat16 --compile"
  [nccl]="--amp bfloat16"
)

ROWS=()
for name in $ONLY; do
  run="$OUT/run_$name"
  log="$OUT/$name.log"
  if [ "$name" = nccl ]; then
    launch=("$TORCHRUN" --standalone --nproc_per_node "$NGPU" -m edgevit.cli.main)
  else
    launch=("$EV")
  fi
  start=$(date +%s)
  # shellcheck disable=SC2086
  if "${launch[@]}" "${COMMON[@]}" --output "$run" --epochs 3 --stop-after-epochs 2 ${FLAGS[$name]} >"$log" 2>&1 \
     && "${launch[@]}" "${COMMON[@]}" --output "$run" --epochs 3 --resume auto ${FLAGS[$name]} >>"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    echo "== $name FAILED; the end of $log:" && tail -n 15 "$log"
  fi
  secs=$(( $(date +%s) - start ))
  ROWS+=("$($PY - "$run" "$name" "$status" "$secs" <<'PYEOF'
import json, sys
from pathlib import Path
run, name, status, secs = sys.argv[1:]
lines = (Path(run) / "metrics.jsonl").read_text().splitlines() if (Path(run) / "metrics.jsonl").is_file() else []
rec = [json.loads(x) for x in lines]
last = rec[-1] if rec else {}
resumed = "yes" if [r["epoch"] for r in rec] == [1, 2, 3] else "no"
print(f"| {name} | {status} | {last.get('val_top1', float('nan')):.2f} | {last.get('images_per_s', float('nan')):.0f} "
      f"| {100 * last.get('data_wait_share', float('nan')):.0f}% | {resumed} | {secs} |")
PYEOF
)")
done

GPU=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')")
echo
echo "digits, EdgeViT-XXS, 64 px, batch 64 per process; device $DEVICE ($GPU), $NGPU process(es) for nccl"
echo "| path | status | val top-1 % (epoch 3) | img/s | data wait | resumed | seconds |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"

if [ "$THROUGHPUT" = 1 ]; then
  echo
  $PY benchmarks/train_throughput.py --device "$DEVICE" --batch "$TT_BATCH" --rounds 5 --warmup 3 --no-pipeline \
    --models edgevits deit_tiny_patch16_224 mobilenetv2_100 --forms eager bf16 channels_last+bf16 compile \
    --json "$OUT/train_throughput.json" 2>"$OUT/train_throughput.log" || { echo "train_throughput FAILED:"; tail -n 15 "$OUT/train_throughput.log"; }
fi
