"""
The machine a run runs on: device and precision, the processes torchrun starts (and FSDP2's sharding of the model
over them), and the signals that stop a run. Shared by train.py and dpo.py.
"""

import dataclasses
import os
import platform
import signal
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from configurator import ConfigError
from model import MiniCPM, config_params


def resolve_system(device="auto", dtype="auto", compile="auto"):
    """(device string, torch dtype, use torch.compile) from the config's `auto` defaults: CUDA with bf16 autocast
    and compile when there is a GPU, else the CPU in fp32, eager."""
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"device={device!r}: use auto, cpu, cuda or cuda:N")
    dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={dev!r} but CUDA is not available: use --device=cpu")
    dt = dtype if dtype != "auto" else ("bfloat16" if dev.startswith("cuda") else "float32")
    if dt not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype={dt!r}: use auto, float32, bfloat16 or float16")
    comp = compile if compile != "auto" else dev.startswith("cuda")
    if not isinstance(comp, bool):
        raise ConfigError(f"compile={compile!r}: use True, False or 'auto'")
    return dev, getattr(torch, dt), comp


def machine(device):
    """The machine a run's floats come from, in words: the GPU, or the CPU's cores, architecture and the vector kernels
    torch runs on it (AVX512, AVX2, ...: another kernel sums in another order, so a run's loss moves by ~0.01 between
    them; on some CPUs the thread count moves it too)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{len(os.sched_getaffinity(0))}-core CPU ({platform.machine()}, {torch.backends.cpu.get_cpu_capability()})"


def hardware(device):
    """The machine in words (machine), for results files, and the torch build."""
    return f"{machine(device)}, torch {torch.__version__}"


# peak dense bf16 FLOP/s by device name (the MFU denominator)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def peak_flops(device):
    """The device's peak dense bf16 FLOP/s (PEAK_FLOPS), None on a CPU or an unlisted GPU (no MFU logged)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def flops_per_token(config, seq_len):
    """Training FLOPs per token: 6 x (non-embedding matmul parameters + the head) + attention 12 L T d
    (PaLM appendix B convention: the causal mask's saving is not subtracted). train.py's MFU, bench.py's tables."""
    c = config
    kv = c.num_key_value_heads * c.head_dim
    per_layer = c.hidden_size * (2 * c.hidden_size + 2 * kv) + 3 * c.hidden_size * c.intermediate_size
    n = c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size
    return 6 * n + 12 * c.num_hidden_layers * seq_len * c.hidden_size


def physical_memory():
    """This machine's memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_in_memory(config):
    """Refuse, in one line, a model whose fp32 weights alone exceed this machine's memory (a vocab_size or a layer
    count mistyped by a few zeros would otherwise allocate until the machine gives up)."""
    from_shapes = config_params(config)
    need = 4 * from_shapes
    have = physical_memory()
    if need > have:
        raise ConfigError(f"the model of this config has {from_shapes:,} parameters ({need / 2 ** 30:,.1f} "
                          f"GiB in fp32), more than this machine's {have / 2 ** 30:,.1f} GiB of memory: check "
                          f"vocab_size, hidden_size, num_hidden_layers, intermediate_size and num_experts")


def check_step_fits(config, batch_size, seq_len, device, activation_checkpointing=False):
    """Refuse, in one line, a training step that cannot fit this device's memory, by a lower bound of what it holds:
    fp32 weights, gradients and AdamW moments (16 bytes a parameter), each layer's fp32 activations (at least
    12 d + 3 f floats a token; one layer's under activation checkpointing), and the logits with their softmax and
    gradient (3 V floats a token). A step over it would only end in the OOM killer, without a word."""
    c, tokens = config, batch_size * seq_len
    layers = 1 if activation_checkpointing else c.num_hidden_layers
    need = 16 * config_params(c) + 4 * tokens * (layers * (12 * c.hidden_size + 3 * c.intermediate_size)
                                                 + 3 * c.vocab_size)
    have = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else physical_memory()
    if need > have:
        raise ConfigError(f"a training step of batch_size={batch_size} rows x seq_len={seq_len} tokens needs at least "
                          f"{need / 2 ** 30:,.1f} GiB, more than this {device.type.upper()}'s {have / 2 ** 30:,.1f} "
                          f"GiB: lower batch_size (raise grad_accum to keep the global batch) or seq_len")


def saved_activation_bytes(config, batch_size, seq_len, activation_checkpointing, probe=None):
    """The bytes autograd keeps for the backward of one training forward (loss included) of `config` under bf16
    autocast, as train.py runs on a GPU: measured on this CPU under autocast (the same bf16 / fp32 split of the ops)
    for one and for two layers of the model at 128 tokens (probe_saved_bytes), which gives what the forward keeps
    outside the blocks and in each, scaled to batch_size x seq_len (every saved tensor grows with the tokens once
    the (T, T) attention weights are left out: a GPU's flash attention keeps their log-sum-exp, B x heads x T
    floats, which is what is counted). Every tensor saved for backward counts once; the weights (and autocast's
    bf16 copies of them) are the static part's. Under activation checkpointing each block keeps its fp32 input, and
    one block's own tensors exist again while its backward recomputes it. Eager: torch.compile fuses pointwise ops
    and keeps less. `probe`: probe_saved_bytes of this config, measured once for several batches."""
    T, outside, block = probe or probe_saved_bytes(config)
    scale = batch_size * seq_len / T
    if not activation_checkpointing:
        return (outside + config.num_hidden_layers * block) * scale
    block_input = batch_size * seq_len * config.hidden_size * 4  # (the residual stream is fp32 under autocast)
    return outside * scale + config.num_hidden_layers * block_input + block * scale


def probe_saved_bytes(config, T=128):
    """(T, bytes saved outside the blocks, bytes saved by one block) of one row of T tokens, under CPU bf16
    autocast, from models of one and of two layers."""
    one, two = (saved_bytes(dataclasses.replace(config, num_hidden_layers=n, max_position_embeddings=max(
        T, config.max_position_embeddings)), T) for n in (1, 2))
    return T, one - (two - one), two - one


def saved_bytes(config, T):
    """The bytes autograd saves for the backward of one row of T tokens (the loss included) through a model of
    `config` under CPU bf16 autocast: every saved tensor's storage once, neither the weights nor autocast's bf16
    copies of them (or their transposes: the static part counts those), the (T, T) attention weights as their
    log-sum-exp. Random weights (the shapes are what counts), drawn without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        model = MiniCPM(config)
    params = {p.data_ptr() for p in model.parameters()}
    by_shape = {}
    for p in model.parameters():
        by_shape.setdefault(tuple(p.shape), []).append(p)
    seen = {}

    def weight_copy(t):
        for u in (t, t.t()) if t.dim() == 2 else (t,):
            if any(u.dtype != p.dtype and torch.equal(u, p.to(u.dtype)) for p in by_shape.get(tuple(u.shape), ())):
                return True
        return False

    def pack(t):
        if t.layout != torch.strided or t.data_ptr() in params or weight_copy(t):
            return t
        attention_weights = t.dim() >= 2 and tuple(t.shape[-2:]) == (T, T) and T > 1
        lse = 4 * config.num_attention_heads * T
        seen[t.untyped_storage().data_ptr()] = lse if attention_weights else t.untyped_storage().nbytes()
        return t
    idx = torch.zeros(1, T, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, idx)
    return sum(seen.values())


def training_memory(config, batch_size, seq_len, activation_checkpointing=True, shards=1, probe=None):
    """Bytes one GPU holds at the peak of a full-parameter training step with AdamW (train.py on CUDA: fp32 master
    weights, bf16 autocast), {part: bytes}: fp32 weights, gradients and the two AdamW moments, 16 bytes a parameter
    (divided over `shards` GPUs under FSDP2); autocast's bf16 copy of the weights, 2 bytes a parameter (FSDP2: the
    bf16 weights of one gathered block instead, ignored); the saved activations (saved_activation_bytes); the fp32
    gradient of the logits. Not counted: the CUDA context and the allocator's slack (~1-2 GiB)."""
    P = config_params(config)
    parts = dict(weights_grads_adamw=16 * P / shards, bf16_weight_copies=2 * P / shards,
                 activations=saved_activation_bytes(config, batch_size, seq_len, activation_checkpointing, probe),
                 logits_gradient=4 * batch_size * seq_len * config.vocab_size)
    return dict(parts, total=sum(parts.values()))


def launch_command(script):
    """The command that started this process, as a user would type it again: python SCRIPT ..., or torchrun with its
    node and process counts (from torchrun's environment); None when SCRIPT runs inside another program."""
    if not sys.argv[0].endswith(script):
        return None
    if "LOCAL_WORLD_SIZE" in os.environ:
        return " ".join([f"torchrun --nnodes={os.environ.get('GROUP_WORLD_SIZE', 1)} --nproc_per_node="
                         f"{os.environ['LOCAL_WORLD_SIZE']}", os.path.basename(sys.argv[0]), *sys.argv[1:]])
    return " ".join(["python", *sys.argv])


def process_device(dev, local_rank):
    """This process's torch.device: under torchrun, GPU local_rank (TF32 matmuls on, as bf16 autocast would allow)."""
    if dev == "cuda":
        dev = f"cuda:{local_rank}"
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(dev)


def setup_distributed(device_type):
    """(rank, local_rank, world_size) from torchrun's environment; one process without it."""
    if "RANK" not in os.environ:
        return 0, 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size()


def check_same_config(cfg, world):
    """Every process of a torchrun job runs the same config (one node may have read another config file): compared
    once, before the first collective that depends on it, so that a mismatch is one line on every rank, not a
    deadlock in mismatched collectives."""
    if world <= 1:
        return
    configs = [None] * world
    dist.all_gather_object(configs, {k: repr(v) for k, v in cfg.items()})
    for rank, other in enumerate(configs):
        diff = sorted(k for k in set(other) | set(configs[0]) if other.get(k) != configs[0].get(k))
        if diff:
            raise ConfigError(f"rank {rank} runs another config than rank 0 (differing keys: {', '.join(diff)}): "
                              f"give every node the same config file and flags")


def all_mean(x, world):
    """The mean of a tensor over the processes (in place)."""
    if world > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= world
    return x


def shard_model(model, ptdtype, device):
    """FSDP2: one fully_shard unit per transformer block, then the root (embeddings, final norm, head). Blocks
    all-gather their weights in the training dtype (bf16 on CUDA) and reduce gradients in fp32; the fp32 shards are
    the master weights. The residual stream and the root stay fp32 (cast_forward_inputs=False), as under DDP with
    autocast, so that FSDP and DDP compute the same function."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    low = None if ptdtype == torch.float32 else ptdtype
    block = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=block)
    fully_shard(model, mesh=mesh, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32))
    return model


class StopFlag:
    """SIGTERM / Ctrl-C set a flag; the loop saves a checkpoint at the end of the step and stops. The entry points
    then exit with 128 + the signal's number (143 for SIGTERM, 130 for Ctrl-C), the shell's code for a process a
    signal stopped, so that a scheduler tells a stopped run (resumable) from a finished one (0)."""

    def __init__(self):
        self.set = False
        self.signum = None
        self.old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not in the main thread: no handler
                pass
        return self

    def _handler(self, signum, frame):
        self.set = True
        self.signum = signum

    @property
    def exit_code(self):
        """128 + the signal that stopped the run (SIGTERM when another process got it, under torchrun)."""
        return 128 + (self.signum or signal.SIGTERM)

    def anywhere(self, device, world):
        """Whether a signal came to any process (under torchrun every process then stops at the same step)."""
        stop_now = torch.tensor(float(self.set), device=device)
        if world > 1:
            dist.all_reduce(stop_now, op=dist.ReduceOp.MAX)
        return bool(stop_now.item())

    def __exit__(self, *exc):
        for sig, h in self.old.items():
            signal.signal(sig, h)
