# The first GPU run: the 0.1B wind-tunnel model (paper §3.1, 109M non-embedding) on a 2.1B-token FineWeb-edu sample,
# one GPU. Prepare the data once (the optional `datasets` package and the network; ~2.1B tokens, ~4 GB uint16):
#   python corpus.py --hf_dataset HuggingFaceFW/fineweb-edu --hf_config sample-10BT --hf_text_field text \
#       --hf_max_docs 2500000 --shard_tokens 100000000 --tokenizer gpt2 --out data/fineweb
#   python train.py config/wt_0.1b_fineweb.py
# Its tokens, time and memory (estimated from the FLOPs, an assumed MFU and the shapes): docs/training.md, "A GPU recipe".
preset = "wt-0.1b"
data = "data/fineweb"
vocab_size = 50304  # gpt2's 50,257 tokens padded to a multiple of 64
out_dir = "out-0.1b-fineweb"
seq_len = 1024
batch_size = 32  # per GPU per micro-step
grad_accum = 16  # 512 rows x 1024 = 0.5M tokens a step: the batch-size law (batchsize.py, paper §3.2) at a loss ~3.3
lr = 0.01  # muP: the wind tunnel's base lr (paper §3.3)
max_steps = 4000  # 2.1B tokens, ~19 per parameter
warmup_steps = 200
decay_steps = 400  # WSD: the last 10% (paper §4)
eval_interval = 250
ckpt_interval = 500
