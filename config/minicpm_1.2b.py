# MiniCPM-1.2B's shape (paper §6.1, the released config.json) on a real corpus, for torchrun on GPUs:
#   python corpus.py --input corpus/*.jsonl --tokenizer cl100k_base --out data/web
#   torchrun --standalone --nproc_per_node=8 train.py config/minicpm_1.2b.py
preset = "minicpm-1.2b"
data = "data/web"
vocab_size = 100352  # cl100k_base has 100,277 tokens: pad to a multiple of 64 (the official vocab is 73,440)
out_dir = "out-1.2b"
seq_len = 4096
batch_size = 8  # per GPU per micro-step, with activation checkpointing: <= 53 GiB eager (system.training_memory;
#                an earlier compiled H100 run: 38.8 GiB); without it, 4 rows (64 GiB compiled, more eager)
activation_checkpointing = True
grad_accum = 16  # 8 GPUs x 16 x 8 x 4096 = 4.2M tokens per step, the paper's batch (§3.2: 1.21e9 / L^6.24)
lr = 0.01  # muP: the base lr found on the wind-tunnel models transfers (paper §3.3)
max_steps = 50000
warmup_steps = 500
decay_steps = 5000
eval_interval = 500
ckpt_interval = 1000
