#!/usr/bin/env bash
# The whole MiniCPM recipe in one command: data, WSD pre-training, the decay on the two-stage mixture (paper §5),
# SFT, DPO (§7.1), evaluation, and a report card (runs/speedrun-SCALE/report.md).
#
#   bash speedrun.sh tiny    # a laptop CPU, the embedded corpus, offline
#   bash speedrun.sh ci      # the same stages, a few steps each (what CI runs)
#   bash speedrun.sh 0.1b    # one GPU on FineWeb-edu (needs `pip install datasets` and the network for the data)
#
# Run it again after a stop: a finished stage is skipped, a stopped one resumes from its checkpoint.
# The 1.2B is a torchrun job: docs/training.md, "A GPU recipe".
set -euo pipefail
cd "$(dirname "$0")"
scale="${1:-tiny}"
root="runs/speedrun-$scale"

case "$scale" in
  ci)   model="--preset=tiny --hidden_size=64 --num_hidden_layers=2 --num_attention_heads=2 --num_key_value_heads=1 --intermediate_size=128"
        data=embedded; stable=40; decay=10; sft=30; dpo=10; batch="--batch_size=8 --seq_len=64"; tasks=30 ;;
  tiny) model="--preset=tiny"
        data=embedded; stable=600; decay=60; sft=300; dpo=100; batch="--batch_size=16 --seq_len=256"; tasks=150 ;;
  0.1b) model="config/wt_0.1b_fineweb.py"  # its tokens, time and memory: docs/training.md, "A GPU recipe"
        data=data/fineweb; stable=3600; decay=400; sft=1000; dpo=200; tasks=300
        batch="--batch_size=32 --grad_accum=16 --seq_len=1024" ;;
  *)    echo "error: unknown scale '$scale': use tiny, ci or 0.1b" >&2; exit 2 ;;
esac
mkdir -p "$root"

# stage NAME DONE_FILE COMMAND...: skipped when DONE_FILE exists, resumed when a checkpoint does
stage() {
  local name="$1" done_file="$2"; shift 2
  if [ -f "$root/$name/$done_file" ]; then echo "== $name: done"; return; fi
  local resume=""
  if [ -e "$root/$name/ckpt.pt" ]; then resume="--resume=True"; fi
  echo "== $name${resume:+ (resumed)}"
  "$@" --out_dir="$root/$name" $resume
}

# 1. data: the offline instruction and preference sets (tasks.py); the corpus is embedded, or FineWeb-edu for 0.1b
[ -f "$root/tasks/pref_train.jsonl" ] || python dpo.py --write_data="$root/tasks" > /dev/null
if [ "$scale" = 0.1b ] && [ ! -f "$data/meta.json" ]; then
  python corpus.py --hf_dataset HuggingFaceFW/fineweb-edu --hf_config sample-10BT --hf_max_docs 2500000 \
    --shard_tokens 100000000 --tokenizer gpt2 --out "$data"
fi
S=$((stable + decay))
final_lr=0.001  # the decay ends at final_lr_ratio 0.1 x lr 0.01: SFT trains at it (§5)

# 2. pre-training, the WSD stable phase (§4)
stage pretrain summary.json python train.py $model $batch --data="$data" --max_steps="$stable" --decay_steps=0 \
  --eval_interval=$((stable / 4)) --sample_tokens=0
# 3. the decay, branched off the stable run, on the two-stage mixture: 30% SFT data (§5)
stage decay summary.json python train.py --init_from="$root/pretrain" $batch --max_steps="$S" --decay_steps="$decay" \
  --data="$data" --decay_data="$data:0.7,$root/tasks/sft_train.jsonl:0.3" --eval_interval=$((decay / 2))
# 4. SFT at the decay's final lr, loss on the responses only
stage sft summary.json python train.py --init_from="$root/decay" --data="$root/tasks/sft_train.jsonl" \
  --max_steps=$((S + sft)) --decay_steps=0 --warmup_steps=0 --lr="$final_lr" --seq_len=64 --batch_size=16 \
  --eval_interval=$((sft / 2)) --sample_tokens=0
# 5. DPO against the SFT model (§7.1)
stage dpo summary.json python dpo.py --init_from="$root/sft" --data="$root/tasks/pref_train.jsonl" \
  --max_steps="$dpo" --lr=3e-6 --beta=0.1 --ckpt_interval="$dpo"
# 6. evaluation of each stage's model: bits per byte, passkeys, the held-out tasks
for name in decay sft dpo; do
  [ -f "$root/$name/eval.json" ] || python eval.py --out_dir="$root/$name" --data="$data" --tasks="$tasks" \
    --windows=32 --passkey_trials=4 > /dev/null
done
# 7. the report card
python card.py "$root"
