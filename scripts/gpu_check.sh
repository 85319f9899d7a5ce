#!/usr/bin/env bash
# The GPU check of issue 18, one call of under 10 minutes on one GPU (run from the repository root):
#
#   OUT=/some/folder scripts/gpu_check.sh          # CUDA: throughput table, 50-step gpt2 run, resume, torchrun FSDP2+Muon
#   OUT=$(mktemp -d) scripts/gpu_check.sh --dry    # the same steps on CPU at tiny sizes (checks the script itself)
#
# Each step runs under `timeout` with its log in $OUT/NAME.log; $OUT/summary.txt gets one line per step (exit code
# and seconds), so a step that hangs or fails costs its own budget and the next still runs. Token shards are cut
# from the repository's own Python source by a tokenizer trained on it (no download); the gpt2 run's vocabulary is
# set to GPT-2's padded 50,304 so its shapes and FLOPs are GPT-2's. PYTHON picks the interpreter (default python3).
set -u
DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY=PASSIVE
: > "$OUT/summary.txt"

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; NPROC=2; SHAPES=tiny; BENCH_STEPS=2
  T_BENCH=120; T_RUN=300; T_RESUME=300; T_DIST=300  # seconds: a shared 2-core machine is slow
  MODEL=(--preset tiny --model n_layer=1 --model n_embd=64 --model n_head=2 --model block_size=64)
  BATCH=(--batch-size 2); STEPS=4; RESUMED=6; DIST_STEPS=3; export LMFORGE_THREADS=1
else
  DEVICE=cuda; NPROC=$("$PY" -c "import torch; print(max(1, torch.cuda.device_count()))"); SHAPES=124m,1b
  BENCH_STEPS=10
  T_BENCH=270; T_RUN=120; T_RESUME=90; T_DIST=100  # seconds, with env and shards: under the 10-minute call
  # 16 x 1024 x 4 = 65k tokens a step (not the preset's 0.5M): 50 steps check the path in seconds, not the recipe
  MODEL=(--preset gpt2 --model vocab_size=50304); BATCH=(--batch-size 16 --grad-accum 4); STEPS=50; RESUMED=60
  DIST_STEPS=20
fi

step() {  # step NAME SECONDS COMMAND...: run under timeout, log to $OUT/NAME.log, one line in summary.txt
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
}

RUN_FLAGS=(--data "$OUT/shards" --device "$DEVICE" "${MODEL[@]}" "${BATCH[@]}" --eval-batches 4 --num-samples 1
           --sample-tokens 16 --no-tensorboard --no-progress)

step env 60 bash -c "nvidia-smi || true; $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.cuda.is_available())'"
step shards 120 "$PY" - "$OUT/shards" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.shards import make_index, shard_entry, write_shard

out = Path(sys.argv[1])
texts = [p.read_text(encoding="utf-8") for p in sorted(Path("lmforge").rglob("*.py"))]
tok = Tokenizer.train(texts, vocab_size=1024)
tok.save(out / "tokenizer")
docs = [np.array([tok.bos_id] + tok.encode(t), dtype=np.uint16) for t in texts]
splits = {}
for split, part in (("train", docs[:-8]), ("val", docs[-8:])):
    write_shard(out / f"{split}_00000.bin", np.concatenate(part))
    splits[split] = [shard_entry(f"{split}_00000.bin", sum(map(len, part)), np.cumsum([0] + [len(d) for d in part[:-1]]))]
(out / "index.json").write_text(__import__("json").dumps(make_index("uint16", tok.vocab_size, tok.bos_id, tok.hash, splits)))
print(f"{sum(map(len, docs)):,} tokens in {len(docs)} documents")
EOF
step bench "$T_BENCH" "$PY" scripts/gpu_throughput.py --device "$DEVICE" --shapes "$SHAPES" \
  --steps "$BENCH_STEPS" --json "$OUT/throughput.json"
step pretrain "$T_RUN" "$PY" -m lmforge pretrain "${RUN_FLAGS[@]}" --out "$OUT/run" \
  --max-steps "$STEPS" --eval-every 25 --checkpoint-every 25
step resume "$T_RESUME" "$PY" -m lmforge pretrain "${RUN_FLAGS[@]}" --out "$OUT/run" \
  --max-steps "$RESUMED" --eval-every 25 --checkpoint-every 25
step fsdp_muon "$T_DIST" "$PY" -m torch.distributed.run --standalone \
  --nproc_per_node "$NPROC" -m lmforge pretrain "${RUN_FLAGS[@]}" --out "$OUT/fsdp" --fsdp --optimizer muon \
  --max-steps "$DIST_STEPS" --eval-every 0 --checkpoint-every 0
grep -h "tokens_per_s\|mfu\|resum\|error" "$OUT"/pretrain.log "$OUT"/resume.log "$OUT"/fsdp_muon.log | tail -n 20 \
  > "$OUT/highlights.txt" || true
cat "$OUT/summary.txt"
! grep -qv " rc=0 " "$OUT/summary.txt"
