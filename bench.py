"""
Benchmarks that print numbers (no timed tests).

    python bench.py                 # CPU fp32: our train step (eager, compiled) and greedy KV-cache generation
                                    # against transformers' LlamaForCausalLM on the same shapes and weights
    python bench.py --device cuda --preset minicpm-1.2b --seq_len 4096 --batch_size 4 --modes mfu
                                    # tokens/s and MFU with bf16 autocast + torch.compile
    python bench.py --modes split   # how far one run's losses drift across batch splits (float summation order):
                                    # results/batch_split_drift.json, the tolerances of tests/conftest.py
    python bench.py --modes kernels # how far one run's loss moves across torch's CPU kernels (AVX512, AVX2, none)
                                    # and thread counts, another machine's float order: results/bench_kernels.json
    python bench.py --modes moe     # one MoE layer (8 experts, top-2) against the dense MLP of the same width
    python bench.py --modes finetune_memory   # the memory of a full fine-tune of the released 1.2B and 2.4B with
                                    # AdamW (activations measured under CPU autocast on 1- and 2-layer slices):
                                    # the batch per 24/40/80 GiB
    python bench.py --modes recipe  # the README's GPU recipe: each config's tokens, time (FLOPs at an assumed MFU)
                                    # and memory (the shapes) on GPUs, and what it costs on this CPU

The reference is our model exported with `official.export_llama` (the multipliers folded into the weights), so both
compute the same function; runs alternate in one process so that machine noise hits both alike. transformers is an
optional, benchmark-only dependency (`pip install transformers`).
"""

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn

from configurator import cli_bool
from corpus import BUILTIN, TokenData
from files import write_json
from model import MLP, MiniCPM, MiniCPMConfig, MoE, config_params
from mup import configure_optimizer
from official import export_llama
from system import PEAK_FLOPS, flops_per_token, hardware, peak_flops, probe_saved_bytes, training_memory
from tasks import write_task_data
from train import get_config, model_config, train

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def timeit(fn, warmup, reps, sync=lambda: None):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def train_step_fn(model, x, y, hf=False):
    opt = configure_optimizer(model, 1e-4) if not hf else torch.optim.AdamW(model.parameters(), lr=1e-4,
                                                                            betas=(0.9, 0.95))

    def step():
        loss = model(input_ids=x, labels=y).loss if hf else model(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench_cpu(a):
    import transformers
    torch.manual_seed(0)
    config = MiniCPMConfig.from_preset(a.preset, max_position_embeddings=max(1024, a.seq_len + a.new_tokens))
    ours = MiniCPM(config)
    with tempfile.TemporaryDirectory() as d:
        export_llama(ours, d)
        ref = transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa")
    print(f"shape {a.preset}: {ours.num_params() / 1e6:.1f}M non-embedding params, batch {a.batch_size} x "
          f"{a.seq_len}, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    x = torch.randint(0, config.vocab_size, (a.batch_size, a.seq_len))
    y = torch.roll(x, -1, 1)
    results = {}
    if "train" in a.modes:
        # train copies, so that the generation benchmark below still compares two equal functions
        ours_t, ref_t = copy.deepcopy(ours), copy.deepcopy(ref)
        fns = {"reference": train_step_fn(ref_t, x, x, hf=True), "ours eager": train_step_fn(ours_t, x, y)}
        if a.compile:
            fns["ours compiled"] = train_step_fn(torch.compile(copy.deepcopy(ours)), x, y)
        times = {k: [] for k in fns}
        for k, f in fns.items():  # warm up (compiles)
            timeit(f, 2, 0)
        for _ in range(a.rounds):  # alternate to share machine noise
            for k, f in fns.items():
                times[k] += timeit(f, 0, a.reps)
        tok = a.batch_size * a.seq_len
        for k, t in times.items():
            med = statistics.median(t)
            results[f"train {k}"] = dict(ms=med * 1e3, tok_per_s=tok / med, all_ms=[x * 1e3 for x in t])
            print(f"train step {k:14s}: {med * 1e3:8.1f} ms  {tok / med:9.0f} tok/s  "
                  f"speed vs reference {times['reference'] and statistics.median(times['reference']) / med:.2f}x")
    if "generate" in a.modes:
        prompt = x[:1, :a.prompt_len]
        mask = torch.ones_like(prompt)  # else transformers takes every token equal to pad_token_id for padding
        ours.eval(), ref.eval()
        with torch.no_grad():
            o = ours.generate(prompt, a.new_tokens, top_k=1)
            r = ref.generate(prompt, attention_mask=mask, max_new_tokens=a.new_tokens, do_sample=False,
                             pad_token_id=0)
        same = torch.equal(o, r)
        fo = lambda: ours.generate(prompt, a.new_tokens, top_k=1)  # noqa: E731
        fr = lambda: ref.generate(prompt, attention_mask=mask, max_new_tokens=a.new_tokens,  # noqa: E731
                                  do_sample=False, pad_token_id=0)
        to, tr = [], []
        with torch.no_grad():
            for _ in range(a.rounds):
                tr += timeit(fr, 1, 1)
                to += timeit(fo, 1, 1)
        mo, mr = statistics.median(to), statistics.median(tr)
        print(f"greedy generate {a.prompt_len}+{a.new_tokens} tokens: ours {a.new_tokens / mo:7.1f} tok/s, "
              f"reference {a.new_tokens / mr:7.1f} tok/s, speedup {mr / mo:.2f}x, identical tokens: {same}")
        results["generate"] = dict(ours_tok_per_s=a.new_tokens / mo, reference_tok_per_s=a.new_tokens / mr,
                                   speedup=mr / mo, identical_tokens=same, prompt=a.prompt_len, new=a.new_tokens)
    record(f"cpu_{a.preset}", a, dict(results, params=ours.num_params(), batch=[a.batch_size, a.seq_len],
                                      threads=torch.get_num_threads(), transformers=transformers.__version__))
    return results


def mfu_step(a, seq_len, batch_size):
    """One bf16-autocast AdamW training step of the preset (the model, optimizer and batch built once)."""
    device = torch.device(a.device)
    torch.manual_seed(0)
    config = MiniCPMConfig.from_preset(a.preset, max_position_embeddings=max(4096, seq_len))
    model = MiniCPM(config).to(device)
    model.activation_checkpointing = a.activation_checkpointing
    opt = configure_optimizer(model, 1e-4)
    step_model = torch.compile(model) if a.compile else model
    x = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = step_model(x, x)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return config, step, dtype


def bench_mfu(a):
    device = torch.device(a.device)
    config, step, dtype = mfu_step(a, a.seq_len, a.batch_size)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t = statistics.median(timeit(step, 3, a.reps, sync))
    tok_s = a.batch_size * a.seq_len / t
    peak = peak_flops(device)
    mfu = flops_per_token(config, a.seq_len) * tok_s / peak if peak else float("nan")
    mfu_text = f"MFU {mfu:.1%}" if peak else "MFU n/a (peak FLOP/s are listed for CUDA devices in PEAK_FLOPS)"
    mem = f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    print(f"{a.preset} batch {a.batch_size} x {a.seq_len} on {torch.cuda.get_device_name(device) if peak else device} "
          f"{dtype} compile={a.compile} activation_checkpointing={a.activation_checkpointing}: {t * 1e3:.1f} ms/step, "
          f"{tok_s:,.0f} tok/s, {mfu_text}{mem}", flush=True)
    out = dict(ms_per_step=t * 1e3, tok_s=tok_s, mfu=mfu if peak else None, batch=[a.batch_size, a.seq_len],
               peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None)
    record(f"mfu_{a.preset}_{a.batch_size}x{a.seq_len}", a, out)
    return out


def bench_memory(a):
    """The longest sequence (batch 1, doubling from --seq_len) whose training step fits on the CUDA device, with
    the peak memory of each length: how activation memory grows with context (longctx.py, README)."""
    device = torch.device(a.device)
    total = torch.cuda.get_device_properties(device).total_memory
    T, fits, rows = a.seq_len, None, []
    while T <= a.max_seq_len:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            _, step, _ = mfu_step(a, T, 1)
            t = statistics.median(timeit(step, 1, 1, torch.cuda.synchronize))
            peak = torch.cuda.max_memory_allocated(device)
            print(f"{a.preset} seq {T:7d}: peak {peak / 2**30:6.1f} GiB of {total / 2**30:.0f} GiB, "
                  f"{t:.2f} s/step, {T / t:,.0f} tok/s", flush=True)
            rows.append(dict(seq_len=T, peak_gib=peak / 2 ** 30, s_per_step=t))
            fits = T
        except torch.OutOfMemoryError:
            print(f"{a.preset} seq {T:7d}: out of memory", flush=True)
            break
        finally:
            step = None
        T *= 2
    print(f"longest training context for {a.preset} (batch 1, activation_checkpointing="
          f"{a.activation_checkpointing}, compile={a.compile}): {fits} tokens")
    record(f"memory_{a.preset}{'_ac' if a.activation_checkpointing else ''}", a,
           dict(rows=rows, longest=fits, total_gib=total / 2 ** 30))


GPU_GIB = (24, 40, 80)  # the memory of the GPUs people fine-tune on: RTX 4090 / L4-class, A100-40GB, A100 / H100-80GB
CUDA_SLACK_GIB = 2  # the CUDA context and the caching allocator's fragmentation, not in training_memory


def largest_batch(config, seq_len, checkpointing, gib, shards=1, probe=None):
    """The most rows of seq_len tokens per GPU whose training step fits gib GiB (training_memory + CUDA_SLACK_GIB),
    0 if not even one; the memory is linear in the rows, measured at 1 and 2 and checked at the answer."""
    one, two = (training_memory(config, b, seq_len, checkpointing, shards, probe)["total"] for b in (1, 2))
    budget = (gib - CUDA_SLACK_GIB) * 2 ** 30
    rows = max(0, int((budget - one) // (two - one)) + 1) if budget >= one else 0
    if rows:
        assert training_memory(config, rows, seq_len, checkpointing, shards, probe)["total"] <= budget * (1 + 1e-9)
    return rows


def bench_finetune_memory(a):
    """Full fine-tuning of the released MiniCPM-1.2B and 2.4B with AdamW at seq_len (default 4096, their context),
    bf16 autocast: training_memory's parts at one row, and the rows per GPU that fit 24, 40 and 80 GiB, with and
    without activation checkpointing, on one GPU and sharded by FSDP2 over 8."""
    seq_len = a.seq_len if a.seq_len != 256 else 4096
    out = dict(seq_len=seq_len, slack_gib=CUDA_SLACK_GIB, models={})
    for preset in ("minicpm-1.2b", "minicpm-2.4b"):
        c = MiniCPMConfig.from_preset(preset)
        probe = probe_saved_bytes(c)
        parts = {f"ac={ac}": {k: round(v / 2 ** 30, 2) for k, v in training_memory(c, 1, seq_len, ac, 1, probe).items()}
                 for ac in (True, False)}
        fits = {f"{gib} GiB, {shards} GPU{'s' if shards > 1 else ''}, ac={ac}": largest_batch(c, seq_len, ac, gib,
                                                                                              shards, probe)
                for shards in (1, 8) for gib in GPU_GIB for ac in (True, False)}
        out["models"][preset] = dict(params=config_params(c), gib_at_one_row=parts,
                                     rows_that_fit=fits)
        print(f"{preset} at {seq_len} tokens, one row: " + "; ".join(
            f"{k}: {v['total']:.1f} GiB ({v['weights_grads_adamw']:.1f} weights+grads+AdamW, {v['activations']:.1f} "
            f"activations)" for k, v in parts.items()))
        print("  rows that fit: " + ", ".join(f"{k}: {v}" for k, v in fits.items()))
    record("finetune_memory", a, out)
    return out


# the first run at each scale (docs/training.md, "A GPU recipe"): (config file, GPUs)
RECIPES = (("config/wt_9m.py", 1), ("config/wt_0.1b_fineweb.py", 1), ("config/minicpm_1.2b.py", 8))
ASSUMED_MFU = 0.40  # the MFU targets bench.py --modes mfu is held to (an H100 measurement is owed: README)
CPU_SPEED = "wt_9m_cpu_speed"  # a measured CPU run (results/): its tokens/s and FLOPs/token give this CPU's FLOP/s


def bench_recipe(a):
    """Each recipe's tokens (max_steps x the global batch), its FLOPs (flops_per_token), the time on H100s at
    ASSUMED_MFU and on the measured CPU at its achieved FLOP/s, its memory per GPU (training_memory: eager, an upper
    bound), and the epochs of its corpus when that is a builtin one: estimates, marked so in the README."""
    with open(os.path.join(RESULTS, f"{CPU_SPEED}.json")) as f:
        cpu_run = json.load(f)
    cpu_cfg = get_config(cpu_run["command"].split()[2:])
    cpu_flops = flops_per_token(model_config(cpu_cfg), cpu_cfg["seq_len"]) * cpu_run["tok_per_s"]
    out = dict(assumed_mfu=ASSUMED_MFU, gpu="H100", gpu_peak_flops=PEAK_FLOPS["H100"], cpu=cpu_run["hardware"],
               cpu_flops_per_s=cpu_flops, cpu_measured_by=cpu_run["command"], recipes=[])
    for file, gpus in RECIPES:
        cfg = get_config([file])
        mcfg = model_config(cfg)
        tokens = cfg["max_steps"] * cfg["batch_size"] * cfg["grad_accum"] * gpus * cfg["seq_len"]
        flops = tokens * flops_per_token(mcfg, cfg["seq_len"])
        memory = training_memory(mcfg, cfg["batch_size"], cfg["seq_len"], cfg["activation_checkpointing"],
                                 gpus if cfg["fsdp"] else 1)["total"]
        train_tokens = TokenData(cfg["data"]).meta["train_tokens"] if cfg["data"] in BUILTIN else None
        command = (f"torchrun --standalone --nproc_per_node={gpus} train.py {file}" if gpus > 1 else
                   f"python train.py {file}")
        out["recipes"].append(dict(
            command=command, preset=cfg["preset"], params=config_params(mcfg), data=cfg["data"], gpus=gpus,
            tokens=tokens, flops=flops, gpu_hours=flops / (ASSUMED_MFU * PEAK_FLOPS["H100"] * gpus) / 3600,
            memory_gib=memory / 2 ** 30, cpu_hours=flops / cpu_flops / 3600,
            epochs=tokens / train_tokens if train_tokens else None))
        r = out["recipes"][-1]
        print(f"{command}: {tokens / 1e9:.2f}B tokens, {flops:.2e} FLOPs: ~{r['gpu_hours']:.1f} h on {gpus} H100 at "
              f"MFU {ASSUMED_MFU:.0%}, <= {r['memory_gib']:.0f} GiB a GPU; ~{r['cpu_hours']:,.0f} h on this CPU")
    record("recipe", a, out)
    return out


def record(name, a, results):
    """results/bench_<name>.json: what a benchmark measured, with its command, the machine, the versions and the
    date (the README quotes these files, never a number measured elsewhere)."""
    write_json(os.path.join(RESULTS, f"bench_{name}.json"), dict(
        command=" ".join(["python", *sys.argv]), hardware=hardware(torch.device(a.device)), torch=torch.__version__,
        date=time.strftime("%Y-%m-%d %H:%M:%S"), args=vars(a), results=results))


def bench_split(a):
    """The relative difference between the losses of one run computed as 1 x 8 rows and as 4 x 2 and 2 x 4
    micro-batches, per step, over 4 seeds: pre-training text (12 steps) and SFT (6 steps, lr 0.01)."""
    t0, out = time.perf_counter(), {}
    with tempfile.TemporaryDirectory() as d:
        sft = write_task_data(os.path.join(d, "tasks"), 200, 20)["sft_train"]
        tiny = dict(preset="tiny", hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                    intermediate_size=128, eval_steps=2, sample_tokens=0, device="cpu", lr=0.01, out_dir="")
        kinds = {"text": dict(seq_len=32, max_steps=12, warmup_steps=2, decay_steps=3, eval_interval=6),
                 "sft": dict(data=sft, seq_len=64, max_steps=6, warmup_steps=0, decay_steps=0, eval_interval=6)}
        for kind, extra in kinds.items():
            first, later = [], []
            for seed in (1337, 1, 2, 3):
                ref = train({**tiny, **extra, "seed": seed, "batch_size": 8}, quiet=True)["train_loss"]
                for B, A in ((4, 2), (2, 4)):
                    got = train({**tiny, **extra, "seed": seed, "batch_size": B, "grad_accum": A}, quiet=True)
                    rel = [abs(x - y) / abs(y) for x, y in zip(got["train_loss"], ref)]
                    first.append(rel[0])
                    later.append(max(rel[1:]))
            out[kind] = dict(first_step_max=max(first), later_steps_max=max(later), steps=extra["max_steps"])
            print(f"{kind:5s}: step 1 differs by <= {max(first):.1e} (relative), later steps by <= {max(later):.1e}")
    write_json(os.path.join("results", "batch_split_drift.json"), dict(
        command="python bench.py --modes split", hardware=hardware(torch.device("cpu")), torch=torch.__version__,
        wall_s=round(time.perf_counter() - t0, 1), splits="1x8 vs 4x2 and 2x4, seeds 1337, 1, 2, 3", **out))


# one short run on the embedded docs, its losses printed as JSON (run in a process of its own per kernel setting)
KERNEL_RUN = ("import json, sys, train; r = train.train(dict(out_dir='', max_steps=200, eval_interval=200, "
              "sample_tokens=0, batch_size=8, seq_len=128, device='cpu', seed=int(sys.argv[1])), quiet=True); "
              "print(json.dumps([r['train_loss'][-1], r['final_val_loss']]))")


def bench_kernels(a, seeds=(1, 2, 3)):
    """One 200-step run per seed under each setting of the CPU kernels torch runs (ATEN_CPU_CAPABILITY: this CPU's
    best, AVX2, none) and of the threads: how far its final losses move from this machine's own (a machine without
    AVX512 runs the AVX2 kernels; their sums run in another order)."""
    native = torch.backends.cpu.get_cpu_capability()
    settings = {f"{native}, all threads": {}, f"{native}, 1 thread": {"OMP_NUM_THREADS": "1"},
                "AVX2": {"ATEN_CPU_CAPABILITY": "avx2"},
                "DEFAULT (no vector kernels)": {"ATEN_CPU_CAPABILITY": "default"}}
    root = os.path.dirname(os.path.abspath(__file__))
    runs = {}
    for name, env in settings.items():
        runs[name] = []
        for seed in seeds:
            out = subprocess.run([sys.executable, "-c", KERNEL_RUN, str(seed)], cwd=root, env={**os.environ, **env},
                                 capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads(out.splitlines()[-1]))
    ref = runs[f"{native}, all threads"]
    results = {}
    for name, losses in runs.items():
        moved = [abs(x[1] - y[1]) for x, y in zip(losses, ref)]
        results[name] = dict(final_train_val=losses, val_moved_max=max(moved), bit_identical=losses == ref)
        print(f"{name:28s}: final val loss moves by <= {max(moved):.2e} from {native}'s"
              + (" (bit for bit the same)" if losses == ref else ""))
    record("kernels", a, dict(steps=200, seeds=list(seeds), native=native, settings=settings, runs=results))


def bench_moe(a, d=512, f=1280, tokens=4096, E=8, k=2, reps=10):
    """Forward and forward+backward time of one MoE layer (model.MoE, paper §7.3) over the dense MLP's."""
    device = a.device
    cfg = MiniCPMConfig(hidden_size=d, intermediate_size=f, num_attention_heads=max(2, d // 64),
                        num_key_value_heads=max(2, d // 64), num_experts=E, top_k=k)
    torch.manual_seed(0)
    mlp, moe = MLP(cfg).to(device), MoE(cfg).to(device)
    for p in moe.parameters():
        nn.init.normal_(p, std=0.02)
    x = torch.randn(tokens, d, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed(fn):
        return statistics.median(timeit(fn, 3, reps, sync))
    results = {}
    with torch.no_grad():
        td, tm = timed(lambda: mlp(x)), timed(lambda: moe(x)[0])
    results["forward"] = tm / td
    xg = x.clone().requires_grad_(True)
    td2 = timed(lambda: mlp(xg).sum().backward())
    tm2 = timed(lambda: moe(xg)[0].sum().backward())
    results["forward+backward"] = tm2 / td2
    results.update(moe_us_per_token=tm / tokens * 1e6, dense_us_per_token=td / tokens * 1e6,
                   shape=dict(d=d, ffn=f, tokens=tokens, experts=E, top_k=k))
    record("moe", a, results)
    print(f"MoE layer ({E} experts, top-{k}, d={d}, ffn={f}, {tokens} tokens, {device}): forward "
          f"{tm / tokens * 1e6:.2f} us/token vs dense {td / tokens * 1e6:.2f} us/token = {tm / td:.2f}x; "
          f"forward+backward {tm2 / td2:.2f}x (the experts do {k}x the dense FLOPs)")
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="wt-9m")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--modes", nargs="+", default=["train", "generate"],
                   help="train generate (CPU, against transformers) | mfu | memory (CUDA) | split, kernels (CPU) | "
                        "moe | finetune_memory | recipe (shapes, FLOPs)")
    p.add_argument("--activation_checkpointing", type=cli_bool, default=False)
    p.add_argument("--max_seq_len", type=int, default=262144, help="memory mode: the longest length tried")
    p.add_argument("--compile", type=cli_bool, default=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=128)
    a = p.parse_args()
    if "split" in a.modes:
        return bench_split(a)
    if "moe" in a.modes:
        return bench_moe(a)
    if "kernels" in a.modes:
        return bench_kernels(a)
    if "finetune_memory" in a.modes:
        return bench_finetune_memory(a)
    if "recipe" in a.modes:
        return bench_recipe(a)
    if "mfu" in a.modes or "memory" in a.modes:
        if "mfu" in a.modes:
            bench_mfu(a)
        if "memory" in a.modes:
            bench_memory(a)
    else:
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise SystemExit("error: the reference benchmark needs the optional package: pip install transformers")
        bench_cpu(a)


if __name__ == "__main__":
    main()
