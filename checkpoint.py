"""
Checkpoints: everything a run keeps on disk, in one place (nanochat's checkpoint manager, torchtitan's one concern
per module). train.py, dpo.py, sample.py and the experiments read and write runs only through these functions.

    out_dir/ckpt.pt          a single-file checkpoint: {model, optimizer, step, config, data, rng}; torch.load with
                             weights_only=True, so opening one runs no code
    out_dir/ckpt_dcp/        an FSDP run's torch.distributed.checkpoint directory (one file per rank, .metadata,
                             train_state.json {step, config, data}); resumable at any world size
    out_dir/ckpt_000600.pt   keep_ckpts=True: every periodic checkpoint, hard links (WSD decay branch points)
    out_dir/metrics.jsonl    one JSON row per step / evaluation

Writes are atomic: a temporary file in the same directory, renamed over the old one, so a kill at any moment
leaves the previous checkpoint or the new one, never a mix.
"""

import json
import os
import shutil
import tempfile

import torch
import torch.distributed as dist

from model import MiniCPM, model_config
from mup import load_named_optimizer_state

DCP_DIR = "ckpt_dcp"  # FSDP runs: a torch.distributed.checkpoint directory, one file per rank + train_state.json


class CheckpointError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------------------
# single file


def save_checkpoint(path, state):
    """Atomic: write a temporary file in the same directory, then rename over the old checkpoint."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found: train into {os.path.dirname(path) or '.'} first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]}); it is left in place: delete it or pick another "
                              f"out_dir") from None
    missing = {"model", "optimizer", "step", "config"} - set(ckpt) if isinstance(ckpt, dict) else {"everything"}
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(sorted(missing))}: not a train.py checkpoint")
    return ckpt


def keep_copy(path, kept):
    """A hard link to the checkpoint at path (the same bytes, no copy; path is later replaced, not rewritten)."""
    if os.path.exists(kept):
        os.remove(kept)
    os.link(path, kept)


# ----------------------------------------------------------------------------------------------------------
# sharded (FSDP2 + torch.distributed.checkpoint)


def save_dcp(path, model, optimizer, train_state, keep=None):
    """Every rank writes its shards in parallel into path.tmp; rank 0 then publishes it by renames (the previous
    checkpoint moves to path.old until the new one is in place), so a kill at any moment leaves one whole checkpoint.
    `keep`: also keep this checkpoint as a hard-linked copy (WSD decay branch points)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    tmp, old = path + ".tmp", path + ".old"
    rank = dist.get_rank()
    if rank == 0 and os.path.isdir(tmp):
        shutil.rmtree(tmp)
    dist.barrier()
    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=tmp)
    if rank == 0:
        with open(os.path.join(tmp, "train_state.json"), "w") as f:
            json.dump(train_state, f)
        if os.path.isdir(path):
            if os.path.isdir(old):
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        if keep:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(path, keep, copy_function=os.link)
    dist.barrier()


def dcp_train_state(path):
    """(directory, train_state) of the published DCP checkpoint at path, or of the previous one if a kill came
    between the two renames of save_dcp."""
    for p in (path, path + ".old"):
        if os.path.isfile(os.path.join(p, "train_state.json")):
            with open(os.path.join(p, "train_state.json")) as f:
                return p, json.load(f)
    raise CheckpointError(f"DCP checkpoint {path} not found (no train_state.json): train into "
                          f"{os.path.dirname(path) or '.'} with --fsdp=True first")


def load_dcp(path, model, optimizer):
    """Load a DCP checkpoint into the (sharded) model and optimizer, at any world size; returns train_state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    path, train_state = dcp_train_state(path)
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optimizer": osd}
    try:
        dcp.load(state, checkpoint_id=path)
    except Exception as e:
        raise CheckpointError(f"DCP checkpoint {path} does not fit the model or is incomplete ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160]})") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return train_state


def dcp_to_checkpoint(path):
    """A DCP directory as the dict of a single-file checkpoint (full tensors, on CPU), through PyTorch's own
    converter; no process group needed."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    path, train_state = dcp_train_state(path)
    with tempfile.TemporaryDirectory() as d:
        dcp_to_torch_save(path, os.path.join(d, "full.pt"))
        full = torch.load(os.path.join(d, "full.pt"), map_location="cpu", weights_only=True)
    return dict(model=full["model"], optimizer=full["optimizer"], **train_state)


# ----------------------------------------------------------------------------------------------------------
# reading a run


def read_checkpoint(path):
    """A checkpoint's dict from ckpt.pt, a DCP directory (ckpt_dcp*), or an out_dir holding either."""
    if os.path.isdir(path) and not os.path.basename(os.path.normpath(path)).startswith(DCP_DIR):  # an out_dir
        path = next((p for p in (os.path.join(path, "ckpt.pt"), os.path.join(path, DCP_DIR)) if os.path.exists(p)),
                    os.path.join(path, "ckpt.pt"))
    return dcp_to_checkpoint(path) if os.path.isdir(path) else load_checkpoint(path)


def load_state(model, optimizer, ckpt, path):
    """A same-shape checkpoint's weights and optimizer state (resume, a WSD branch); returns its step."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model ({str(e).splitlines()[0]})") from None
    return ckpt["step"]


def load_full_state(model, optimizer, model_state, named_optimizer_state):
    """Full (unsharded) weights and {param name: AdamW state} into a model and the optimizer made for it, sharded by
    FSDP2 or not; params without state (a new router, a new untied head) start without, as a fresh AdamW would."""
    missing = sorted(set(model.state_dict()) - set(model_state))
    if missing:
        raise ValueError(f"no weights for {', '.join(missing[:3])}")
    if not any(hasattr(p, "full_tensor") for p in model.parameters()):
        model.load_state_dict(model_state)
        return load_named_optimizer_state(model, optimizer, named_optimizer_state)
    # FSDP2 DTensors: PyTorch's resharding loader, in its by-name format
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    names = {p: n for n, p in model.named_parameters()}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[p] for p in g["params"]]}
              for g in optimizer.param_groups]
    set_state_dict(model, optimizer, model_state_dict=model_state,
                   optim_state_dict={"state": named_optimizer_state, "param_groups": groups},
                   options=StateDictOptions(full_state_dict=True, strict=False))
    for p, n in names.items():  # PyTorch initialised every state with a step: drop those the checkpoint lacks
        if n not in named_optimizer_state:
            optimizer.state.pop(p, None)


def model_from_checkpoint(path, device="cpu"):
    """(model, config dict) from a train.py checkpoint (ckpt.pt, an out_dir, or a DCP directory)."""
    ckpt = read_checkpoint(path)
    model = MiniCPM(model_config(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt["config"]


def export_checkpoint(src, dst):
    """A train.py checkpoint (ckpt.pt, or an FSDP run's DCP directory) -> the official single-file format in dst
    (config.json + model.safetensors, or pytorch_model.bin without safetensors), which MiniCPM.from_pretrained
    reads."""
    model, _ = model_from_checkpoint(src)
    model.save_pretrained(dst)
    return dst


# ----------------------------------------------------------------------------------------------------------
# metrics.jsonl


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows):
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)


def append_jsonl(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
