# DPO against the SFT model (paper §7.1, dpo.py): python train.py config/dpo.py --init_from=out-sft --data=pref.jsonl
# The policy starts from init_from's weights with a fresh AdamW, and counts its own steps from 0. The reference is
# init_from's model, frozen. The schedule is train.py's (warmup 5%, an exp decay over the last 10%).
objective = "dpo"
out_dir = "out-dpo"
lr = 1e-5  # the paper's order of magnitude
weight_decay = 0.0
batch_size = 16  # pairs per process per micro-step
max_steps = 200
seq_len = 64  # prompt + response, each pair's longer side
ckpt_interval = 50
sample_tokens = 0
beta = 0.1
