"""
Checkpoints: everything a run keeps on disk, in one place (nanochat's checkpoint manager, torchtitan's one concern
per module). train.py, dpo.py, sample.py and the experiments read and write runs only through these functions.

    out_dir/ckpt.pt          a single-file checkpoint: {model, optimizer, step, config, data, rng}; torch.load with
                             weights_only=True, so opening one runs no code
    out_dir/ckpt_dcp/        an FSDP run's torch.distributed.checkpoint directory (one file per rank, .metadata,
                             train_state.json {step, config, data}); resumable at any world size
    out_dir/ckpt_000600.pt   keep_ckpts=True: every periodic checkpoint, hard links (WSD decay branch points)
    out_dir/metrics.jsonl    one JSON row per step / evaluation

What is guaranteed:
- atomic: a checkpoint is written to a temporary file (directory) beside it, fsynced, renamed over the old one and
  the directory fsynced, so a kill or a power loss at any moment leaves the previous checkpoint or the new one;
- never worse: non-finite weights are never saved, and a failed write (a full disk) removes its partial file,
  keeps the previous checkpoint and stops with one line saying how much space a checkpoint needs;
- locked: a run holds an flock on out_dir/.lock for its whole life (released by the kernel when the process dies,
  so a killed run leaves no stale lock); a second run on the same out_dir stops at once naming the first;
- no code runs on load: ckpt.pt is read with torch.load(weights_only=True); a DCP directory's .metadata with an
  unpickler that admits only PyTorch's checkpoint metadata classes, and its non-tensor entries with
  torch.load(weights_only=True). A tampered file is one line of error, and nothing in it runs. (Official-format
  directories, official.from_pretrained: safetensors, or pytorch_model.bin with weights_only=True.)
"""

import io
import json
import os
import pickle
import shutil
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from configurator import ConfigError
from corpus import load_data
from files import (check_regular, fix_for, fsync_dir, locked as locked_dir, make_dirs, one_line, open_append,
                   open_regular, parse_json, read_json, replace_atomically)
from model import MiniCPM, MiniCPMConfig, model_config
from mup import load_named_optimizer_state
from official import WEIGHT_FILES, config_from_json, export_llama, from_pretrained, is_official_dir, save_pretrained
from system import check_fits_in_memory
from tokenizer import known_tokenizers, save_tokenizer, tokenizer_id, tokenizer_of

DCP_DIR = "ckpt_dcp"  # FSDP runs: a torch.distributed.checkpoint directory, one file per rank + train_state.json


class CheckpointError(RuntimeError):
    pass


def first_line(e):
    """An exception as one short line (files.one_line), a DCP error as its first rank's own exception."""
    if isinstance(e, CheckpointException) and e.failures:
        e = next(iter(e.failures.values()))[0]
    return one_line(e)


def nbytes(obj):
    """Bytes of the tensors in a (nested) state dict: the space a checkpoint of it needs."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


def all_finite(tensors):
    """True when every floating-point tensor (local shards of DTensors) is finite."""
    return all(bool(torch.isfinite(t.to_local() if hasattr(t, "to_local") else t).all())
               for t in tensors if t.is_floating_point())


def disk_full_error(path, e, need):
    """A failed checkpoint write as one line: the cause, that the previous checkpoint is kept, and the fix (space,
    or a read-only / unwritable directory or file: files.fix_for)."""
    fix = fix_for(e, path)
    if fix.startswith("free space"):
        fix = f"a checkpoint needs about {need / 2 ** 20:,.1f} MiB free in {os.path.dirname(path) or '.'}"
    return CheckpointError(f"could not write {path} ({first_line(e)}); the previous checkpoint is kept: {fix}")


# ----------------------------------------------------------------------------------------------------------
# single file


def save_checkpoint(path, state):
    """Atomic and durable: write path.tmp, fsync it, rename it over the old checkpoint, fsync the directory. Refuses
    non-finite weights; on a write error (a full disk) removes path.tmp, keeps the old checkpoint, one-line error."""
    if not all_finite(state["model"].values()):
        raise CheckpointError(f"refusing to save non-finite weights into {path}; the previous checkpoint is kept")
    # (a real full disk: an OSError, or torch's zip writer's RuntimeError when it closes the file)
    replace_atomically(path, lambda f: torch.save(state, f), need=nbytes(state), durable=True, error=disk_full_error)


def load_checkpoint(path):
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} not found: train into {os.path.dirname(path) or '.'} first")
    try:
        ckpt = torch.load(check_regular(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt, truncated or not a plain-data checkpoint "
                              f"({first_line(e)}); nothing in it was run and it is left in place: delete it or pick "
                              f"another out_dir") from None
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


# what a DCP .metadata file may name: PyTorch's checkpoint metadata classes, paths, sizes, dtypes and layouts
DCP_METADATA_MODULES = {"torch.distributed.checkpoint.metadata"}
DCP_METADATA_GLOBALS = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
                        ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
                        ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath")}


class MetadataUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals a DCP .metadata file holds (the promise of
    torch.load(weights_only=True) for ckpt.pt): any other global (os.system ...) is refused before it runs."""

    def find_class(self, module, name):
        if module in DCP_METADATA_MODULES or (module, name) in DCP_METADATA_GLOBALS or \
                (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a checkpoint metadata class")


class SafeFileSystemReader(dcp.FileSystemReader):
    """FileSystemReader whose .metadata is read by MetadataUnpickler instead of pickle.load."""

    def read_metadata(self, *args, **kwargs):
        with open(os.path.join(self.path, ".metadata"), "rb") as f:
            metadata = MetadataUnpickler(f).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = getattr(self, "load_id", None)
        return metadata


def safe_bytes(value):
    """A DCP non-tensor entry (optimizer hyper-parameters) decoded by torch.load(weights_only=True), handed on as
    bytes of those plain values only (PyTorch's planners torch.load them with weights_only=False)."""
    buf = io.BytesIO()
    torch.save(torch.load(value, weights_only=True), buf)
    buf.seek(0)
    return buf


class SafeLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item, value):
        super().load_bytes(read_item, safe_bytes(value))


class SafeFullLoadPlanner(_EmptyStateDictLoadPlanner):
    """Loads a whole DCP checkpoint into an empty dict (what dcp_to_torch_save does), safely."""

    def load_bytes(self, read_item, value):
        super().load_bytes(read_item, safe_bytes(value))


def save_dcp(path, model, optimizer, train_state, keep=None):
    """Every rank writes its shards in parallel into path.tmp; rank 0 then publishes it by renames (the previous
    checkpoint moves to path.old until the new one is in place), so a kill at any moment leaves one whole checkpoint.
    `keep`: also keep this checkpoint as a hard-linked copy (WSD decay branch points). Non-finite weights on any
    rank, or a write error, leave the previous checkpoint in place (one-line error on every rank)."""
    tmp, old = path + ".tmp", path + ".old"
    rank = dist.get_rank()
    finite = torch.tensor(float(all_finite(model.parameters())), device=next(model.parameters()).device)
    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not finite.item():
        raise CheckpointError(f"refusing to save non-finite weights into {path}; the previous checkpoint is kept")
    if rank == 0 and os.path.isdir(tmp):
        shutil.rmtree(tmp)
    dist.barrier()
    msd, osd = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=tmp)
        if rank == 0:
            replace_atomically(os.path.join(tmp, "train_state.json"), lambda f: json.dump(train_state, f), mode="w",
                               durable=True)
            for name in os.listdir(tmp):  # the shards are durable before the directory is published
                with open(os.path.join(tmp, name), "rb") as f:
                    os.fsync(f.fileno())
            fsync_dir(tmp)
    except (OSError, CheckpointException) as e:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise disk_full_error(tmp, e, nbytes(msd) + nbytes(osd)) from None
    if rank == 0:
        if os.path.isdir(path):
            if os.path.isdir(old):
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(path))
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
            try:
                return p, read_json(os.path.join(p, "train_state.json"), dict, "write the checkpoint again")
            except (OSError, ValueError) as e:
                raise CheckpointError(f"DCP checkpoint {p}: train_state.json is unreadable ({first_line(e)})") from None
    single = os.path.join(os.path.dirname(os.path.normpath(path)), "ckpt.pt")
    if os.path.isfile(single):
        raise CheckpointError(f"DCP checkpoint {path} not found, but {single} is a single-file checkpoint: drop "
                              f"--fsdp=True to resume it (or --init_from it under FSDP)")
    raise CheckpointError(f"DCP checkpoint {path} not found (no train_state.json): train into "
                          f"{os.path.dirname(path) or '.'} with --fsdp=True first")


def read_dcp(path, state, planner):
    """dcp.load into `state` with the safe reader and planner; any failure (a tampered, incomplete or mismatched
    directory: PyTorch raises CheckpointException, a BaseException) as one CheckpointError line."""
    try:  # the metadata first, alone: a refusal is then one clear line (PyTorch would log tracebacks first)
        SafeFileSystemReader(path).read_metadata()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"DCP checkpoint {path} refused: its .metadata is not plain checkpoint metadata ({e}); "
                              f"nothing in it was run") from None
    except Exception as e:
        raise CheckpointError(f"DCP checkpoint {path} is incomplete or corrupt: its .metadata cannot be read "
                              f"({first_line(e)})") from None
    try:
        if isinstance(planner, SafeFullLoadPlanner):  # fills an empty dict (dcp.load only updates existing keys)
            _load_state_dict(state, storage_reader=SafeFileSystemReader(path), planner=planner, no_dist=True)
        else:
            dcp.load(state, storage_reader=SafeFileSystemReader(path), planner=planner)
    except (Exception, CheckpointException) as e:
        raise CheckpointError(f"DCP checkpoint {path} cannot be loaded: it is incomplete, does not fit the model, or "
                              f"holds something other than plain checkpoint data ({first_line(e)}); nothing in it was "
                              f"run") from None


def load_dcp(path, model, optimizer):
    """Load a DCP checkpoint into the (sharded) model and optimizer, at any world size; returns train_state."""
    path, train_state = dcp_train_state(path)
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optimizer": osd}
    read_dcp(path, state, SafeLoadPlanner())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return train_state


def dcp_to_checkpoint(path):
    """A DCP directory as the dict of a single-file checkpoint (full tensors, on CPU); no process group needed."""
    path, train_state = dcp_train_state(path)
    state = {}
    read_dcp(path, state, SafeFullLoadPlanner())  # every process reads it whole
    if not isinstance(state.get("model"), dict) or not isinstance(state.get("optimizer"), dict):
        raise CheckpointError(f"DCP checkpoint {path} lacks its model or optimizer state: not a train.py checkpoint")
    return dict(model=state["model"], optimizer=state["optimizer"], **train_state)


# ----------------------------------------------------------------------------------------------------------
# reading a run


def checkpoint_path(path):
    """The checkpoint an out_dir, ckpt.pt or DCP directory (ckpt_dcp*) names: ckpt.pt or a DCP directory."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path} does not exist: give a train.py out_dir, its ckpt.pt or a {DCP_DIR} directory")
    if os.path.isdir(path) and not os.path.basename(os.path.normpath(path)).startswith(DCP_DIR):  # an out_dir
        held = [p for p in (os.path.join(path, "ckpt.pt"), os.path.join(path, DCP_DIR)) if os.path.exists(p)]
        if not held and os.path.isfile(os.path.join(path, "config.json")):  # a released directory, its weights missing
            raise CheckpointError(f"{path} has a config.json but no weights ({' or '.join(WEIGHT_FILES)}): the "
                                  f"download is incomplete")
        if not held:
            raise CheckpointError(f"{path} holds no checkpoint (ckpt.pt or {DCP_DIR}/): train into it first "
                                  f"(python train.py --out_dir={path})")
        path = held[0]
    return path


def read_checkpoint(path):
    """A checkpoint's dict from ckpt.pt, a DCP directory (ckpt_dcp*), or an out_dir holding either."""
    path = checkpoint_path(path)
    return dcp_to_checkpoint(path) if os.path.isdir(path) else load_checkpoint(path)


def stored_config(path):
    """The config a run's checkpoint was written with (for a released directory: its model keys, from config.json),
    read without loading the weights (ckpt.pt memory-mapped, a DCP directory's train_state.json); None where there
    is nothing readable (the error is then the one of reading it for real)."""
    try:
        if os.path.isdir(path) and is_official_dir(path):
            return asdict(config_from_json(path))
        path = checkpoint_path(path)
        if os.path.isdir(path):
            return dcp_train_state(path)[1]["config"]
        return torch.load(check_regular(path), map_location="cpu", weights_only=True, mmap=True)["config"]
    except Exception:  # (any unreadable file: reading it for real says what is wrong, in one line)
        return None


def load_state(model, optimizer, ckpt, path):
    """A same-shape checkpoint's weights and optimizer state (resume, a WSD branch); returns its step."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model ({first_line(e)})") from None
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
    names = {p: n for n, p in model.named_parameters()}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[p] for p in g["params"]]}
              for g in optimizer.param_groups]
    set_state_dict(model, optimizer, model_state_dict=model_state,
                   optim_state_dict={"state": named_optimizer_state, "param_groups": groups},
                   options=StateDictOptions(full_state_dict=True, strict=False))
    for p, n in names.items():  # PyTorch initialised every state with a step: drop those the checkpoint lacks
        if n not in named_optimizer_state:
            optimizer.state.pop(p, None)


def checkpoint_tokenizer(ckpt, path):
    """The tokenizer a run trained with, as get_encoding names it (a name, or a checkpoint directory): recorded in
    its checkpoint; a checkpoint from before that: its data's (a .jsonl alone: the byte tokenizer)."""
    if ckpt.get("tokenizer"):
        return ckpt["tokenizer"]
    try:
        return load_data(ckpt["config"]["data"]).meta["tokenizer"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} records no tokenizer, and the data it trained on cannot be read "
                              f"to find it ({first_line(e)}): put its data back") from None


class Loaded(NamedTuple):
    """A run's model and what goes with it: its train.py config, its tokenizer, the official directory it was
    trained on from (None for a run of its own)."""
    model: MiniCPM
    config: dict
    tokenizer: str
    origin: str


@dataclass
class StartPoint:
    """What a new stage starts from (train.py / dpo.py --init_from): a run's checkpoint, or a released checkpoint
    in the official format (its weights; no optimizer state and step 0: AdamW starts fresh, the schedule from its
    warmup)."""
    path: str
    config: MiniCPMConfig
    model: dict  # the state dict
    optimizer: dict  # a train.py run's optimizer state dict, None for an official directory
    step: int
    tokenizer: str  # as get_encoding names it; None for an official directory without tokenizer files
    tokenizer_id: str
    origin: str  # the official directory at the root of the run's lineage, or None
    checkpoint: dict = None  # the whole checkpoint dict, where train.py resumes it


def read_official(path, device="cpu"):
    """(model, tokenizer as get_encoding names it or None) of a released directory, a bad file as one line."""
    try:
        model = from_pretrained(path, device=device)  # fp32 master weights, whatever the files' dtype
        return model, tokenizer_of(path)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"official checkpoint {path}: {first_line(e)}") from None


def read_start_point(path):
    """The StartPoint of an out_dir, ckpt.pt, DCP directory or official-format directory."""
    if os.path.isdir(path) and is_official_dir(path):
        model, tokenizer = read_official(path)
        return StartPoint(path, model.config, model.state_dict(), None, 0, tokenizer,
                          tokenizer_id(tokenizer) if tokenizer else None, os.path.abspath(path))
    ckpt = read_checkpoint(path)
    try:
        config = model_config(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has a config that cannot be built ({first_line(e)})") from None
    tokenizer = checkpoint_tokenizer(ckpt, path)
    return StartPoint(path, config, ckpt["model"], ckpt["optimizer"], ckpt["step"], tokenizer,
                      ckpt.get("tokenizer_id", tokenizer), ckpt.get("origin"))


def model_from_checkpoint(path, device="cpu"):
    """Loaded(model, config dict, tokenizer, origin) from a train.py or dpo.py checkpoint (ckpt.pt, an out_dir, or
    a DCP directory), or from a released checkpoint (an official directory: its config as model keys, its own
    tokenizer, itself as the origin)."""
    if os.path.isdir(path) and is_official_dir(path):
        model, tokenizer = read_official(path, device)
        if tokenizer is None:
            raise CheckpointError(f"{path} holds no tokenizer (tokenizer.json or tokenizer.model): copy the released "
                                  f"checkpoint's tokenizer files into it")
        return Loaded(model.eval(), asdict(model.config), tokenizer, os.path.abspath(path))
    ckpt = read_checkpoint(path)
    try:
        config = model_config(ckpt["config"])
        check_fits_in_memory(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has a config that cannot be built ({first_line(e)})") from None
    model = MiniCPM(config)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit its config ({first_line(e)}); it was "
                              f"written by another program or altered") from None
    return Loaded(model.to(device).eval(), ckpt["config"], checkpoint_tokenizer(ckpt, path), ckpt.get("origin"))


def export_checkpoint(src, dst, fmt="minicpm"):
    """A train.py checkpoint (ckpt.pt, or an FSDP run's DCP directory) -> the official single-file format in dst
    (config.json + model.safetensors, or pytorch_model.bin without safetensors), which official.from_pretrained
    reads, and the run's tokenizer beside it (tokenizer.save_tokenizer: a checkpoint directory's tokenizer files
    as they are), so that sample.py --model_dir=dst, transformers' AutoTokenizer and `tokenizers` read it. A run
    trained on from a released checkpoint also gets that directory's other config fields and files (its modeling
    code ...), as the released directory has them."""
    held = [f for f in ("config.json", "tokenizer.json", "tiktoken.json") + WEIGHT_FILES
            if os.path.exists(os.path.join(dst, f))] + run_files(dst)
    if held:
        raise CheckpointError(f"{dst} already holds a model ({', '.join(held)}): export into a new directory (its "
                              f"files would be mixed with the new ones), or remove it first")
    loaded = model_from_checkpoint(src)
    if fmt == "llama":  # transformers loads it without custom code (a MiniCPM-MoE model as Mixtral)
        export_llama(loaded.model, dst, tokenizer=loaded.tokenizer)
        return dst
    for need in (loaded.origin, loaded.tokenizer if loaded.tokenizer not in known_tokenizers() else None):
        if need and not os.path.isdir(need):
            raise CheckpointError(f"{src} was trained on from {need}, which is not there any more: put it back (its "
                                  f"tokenizer and files go with the export)")
    save_pretrained(loaded.model, dst, source=loaded.origin)
    save_tokenizer(loaded.tokenizer, dst)
    return dst


# ----------------------------------------------------------------------------------------------------------
# the run directory: lock and metrics.jsonl


def is_checkpoint(name):
    """Whether a name in an out_dir is a checkpoint (ckpt.pt, a DCP directory, a kept ckpt_NNNNNN.pt or
    ckpt_dcp_NNNNNN, a DCP directory's previous copy): what only --overwrite=True may delete."""
    return name in ("ckpt.pt", DCP_DIR, DCP_DIR + ".old") or (name.startswith("ckpt_") and (
        name.endswith(".pt") or name.startswith(DCP_DIR + "_")) and not name.endswith(".tmp"))


def run_files(out_dir):
    """The checkpoints an out_dir holds (is_checkpoint): what --resume would continue, and what a fresh run must not
    replace without --overwrite (metrics.jsonl alone, of a run killed before its first checkpoint, holds nothing)."""
    return sorted(n for n in os.listdir(out_dir) if is_checkpoint(n)) if os.path.isdir(out_dir) else []


# what a run writes besides its checkpoints: removed when a fresh run starts in the out_dir
RUN_OUTPUTS = (DCP_DIR + ".tmp", "ckpt.pt.tmp", "summary.json", "loss.png", "eval.json")


def claim_out_dir(out_dir, resume, overwrite, init_from=""):
    """Whether a run (train.py's or dpo.py's) may write into out_dir: one that holds checkpoints needs --resume or
    --overwrite, and --overwrite, which empties it (start_over), must not hold the run's source."""
    held = run_files(out_dir) if not resume and not overwrite else []
    if held:
        raise ConfigError(f"out_dir {out_dir} holds a run ({', '.join(held)}): continue it with --resume=True, or "
                          f"start over with --overwrite=True (its checkpoints and metrics go)")
    out = os.path.abspath(out_dir)
    if overwrite and init_from and os.path.commonpath([os.path.abspath(init_from), out]) == out:
        raise CheckpointError(f"init_from {init_from} lies inside out_dir {out_dir}, which --overwrite=True empties: "
                              f"write this run into another --out_dir")


def start_over(out_dir, overwrite, log=print):
    """Remove what an earlier run left in out_dir (summary.json, loss.png, metrics.jsonl ...), so that a fresh run
    there never sits beside another run's files; its checkpoints only under --overwrite=True (claim_out_dir refuses
    a plain run into an out_dir that holds one)."""
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    old = [n for n in names if n in RUN_OUTPUTS or (overwrite and is_checkpoint(n))]
    old += ["metrics.jsonl"] if "metrics.jsonl" in names else []  # last: it says a run was here until the rest went
    if not old:
        return
    log(f"starting over in {out_dir}: the earlier run's {', '.join(sorted(old))} go")
    for n in old:
        p = os.path.join(out_dir, n)
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)


def locked(out_dir):
    """Hold an exclusive flock on out_dir/.lock while the block runs (files.locked): the kernel releases it when the
    process ends, however it ends, so a killed run never leaves a stale lock; a second run stops at once, one line."""
    return locked_dir(out_dir, lambda holder: CheckpointError(
        f"out_dir {out_dir} is in use by another run ({holder}): wait for it to finish, stop it, or choose another "
        f"--out_dir"))


def open_metrics(out_dir, resume, overwrite, step, log=print):
    """The rows of out_dir/metrics.jsonl so far, the file rewritten to hold them: on resume those up to the
    checkpoint's step (rows logged after it are dropped, a torn last line too; none if the file is missing: a resume
    never deletes anything), else none: a fresh file, and what an earlier run left there removed (start_over)."""
    path, rows = os.path.join(out_dir, "metrics.jsonl"), []
    make_dirs(out_dir)
    if resume:
        if os.path.lexists(path):
            rows, torn = read_jsonl(path, torn_ok=True)
            if torn:
                log(f"{path}: dropped a torn last line (a crash while it was written)")
            rows = [r for r in rows if r.get("step", 0) <= step]
        else:
            log(f"{path} is missing: the resumed run's metrics start at step {step}")
    else:
        start_over(out_dir, overwrite, log)
    write_jsonl(path, rows)
    return rows


def read_jsonl(path, torn_ok=False):
    """Rows of a jsonl file. torn_ok: a last line cut short (a crash mid-append) is dropped, as (rows, True);
    any other bad line is an error naming file:line."""
    with open_regular(path, "rb") as f:
        lines = f.read().split(b"\n")
    rows, torn = [], False
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = parse_json(line, f"{path}:{i}")
        except ValueError as e:
            if torn_ok and not any(rest.strip() for rest in lines[i:]):
                torn = True
                continue
            raise CheckpointError(f"{e}: repair or delete the line") from None
        if not isinstance(row, dict):
            raise CheckpointError(f"{path}:{i} is a JSON {type(row).__name__}, not a row object: repair or delete "
                                  f"the line")
        rows.append(row)
    return (rows, torn) if torn_ok else rows


def write_jsonl(path, rows):
    """Atomic rewrite; a write error (a full disk) removes the temporary file and is one line."""
    replace_atomically(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in rows), mode="w")


def append_jsonl(path, row):
    try:
        with open_append(path) as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise CheckpointError(f"could not append to {path} ({first_line(e)}): {fix_for(e, path)}; the last "
                              f"checkpoint is kept") from None
