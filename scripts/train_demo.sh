#!/usr/bin/env bash
# Rebuild the bundled demo model on a GPU: three trainings side by side on one device, the better held-out
# validation loss wins and is copied to OUTDIR. Needs .data/kjv from scripts/prepare_kjv.py.
#   scripts/train_demo.sh OUTDIR
set -euo pipefail
out=${1:?usage: scripts/train_demo.sh OUTDIR}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd) PYTHONUNBUFFERED=1
[ -f .data/kjv/train.txt ] || python3 scripts/prepare_kjv.py -o .data/kjv
common=(.data/kjv/train.txt --preset mini --vocab-size 4096 --seq-len 512 --batch-size 32 --device cuda --eval-every 50 --force --no-resume)
# The corpus is ~1M tokens: a 17M model overfits after ~10 epochs, so the schedules are short and the
# best validation step is kept. An earlier 2500/3000-step run peaked at step 400-600 (val loss 3.25).
python3 -m retnet_edge train "${common[@]}" -o /tmp/demo_a --steps 700 --dropout 0.1 --lr 1.5e-3 > /tmp/demo_a.json 2> /tmp/demo_a.log & pa=$!
python3 -m retnet_edge train "${common[@]}" -o /tmp/demo_c --steps 1200 --dropout 0.3 --lr 1.5e-3 > /tmp/demo_c.json 2> /tmp/demo_c.log & pc=$!
python3 -m retnet_edge train "${common[@]}" -o /tmp/demo_b --steps 900 --dropout 0.2 --lr 1.5e-3 > /tmp/demo_b.json 2> /tmp/demo_b.log
wait $pc
wait $pa
best=$(python3 - <<'PY'
import json
runs = {r: json.load(open(f"/tmp/demo_{r}/train_log.json"))["best_val_loss"] for r in "abc"}
print(min(runs, key=runs.get))
PY
)
echo "keeping run $best"; tail -n 2 /tmp/demo_[abc].log
rm -rf "$out" && cp -r "/tmp/demo_$best" "$out"
