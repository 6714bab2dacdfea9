# A wind-tunnel run (paper §3.1): the 9M-parameter model on the embedded corpus.
# One GPU: a few minutes. CPU: python train.py config/wt_9m.py --device=cpu (about an hour on 2 cores).
preset = "wt-9m"
out_dir = "out-wt-9m"
batch_size = 32
seq_len = 512
max_steps = 3000
warmup_steps = 100
decay_steps = 300  # 10% of S (paper §4.3)
eval_interval = 250
ckpt_interval = 500
