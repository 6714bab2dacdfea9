# A wind-tunnel run (paper §3.1): the 9M-parameter model on the embedded corpus; warmup 5% and WSD decay 10% of
# max_steps (train.py's defaults, so --max_steps=20 works as well as 3000).
# One GPU: a few minutes. CPU: python train.py config/wt_9m.py --device=cpu: 16k tokens a step at 1,280 tokens/s
# on 2 cores (results/wt_9m_cpu_speed.json), about 11 hours for 3000 steps: use --max_steps there.
preset = "wt-9m"
out_dir = "out-wt-9m"
batch_size = 32
seq_len = 512
max_steps = 3000
eval_interval = 250
ckpt_interval = 500
