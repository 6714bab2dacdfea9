"""
Sample from a trained model (nanoGPT's sample.py habit), with model.generate's KV cache.

    python sample.py --out_dir=out --prompt="The " --max_new_tokens=300    # a train.py checkpoint
    python sample.py --model_dir=path/to/MiniCPM-1B-sft-bf16 --prompt="..."   # an official checkpoint directory

An official directory's tokenizer is read from tokenizer.json (optional package `tokenizers`) or tokenizer.model
(optional package `sentencepiece`).
"""

import argparse
import os
import sys

import torch

from checkpoint import CheckpointError, model_from_checkpoint
from corpus import load_data
from model import MiniCPM


class HFTokenizer:
    """The tokenizer of an official checkpoint directory, through whichever optional package reads it."""

    def __init__(self, path):
        tj, sp = os.path.join(path, "tokenizer.json"), os.path.join(path, "tokenizer.model")
        self.eos = None
        if os.path.isfile(tj):
            try:
                from tokenizers import Tokenizer
            except ImportError:
                raise ImportError(f"{tj} needs the optional package: pip install tokenizers") from None
            self.tok = Tokenizer.from_file(tj)
            self.encode = lambda s: self.tok.encode(s).ids
            self.decode = lambda ids: self.tok.decode(ids)
            self.eos = self.tok.token_to_id("</s>")
        elif os.path.isfile(sp):
            try:
                import sentencepiece
            except ImportError:
                raise ImportError(f"{sp} needs the optional package: pip install sentencepiece") from None
            self.tok = sentencepiece.SentencePieceProcessor(model_file=sp)
            self.encode = lambda s: [self.tok.bos_id()] + self.tok.encode(s)
            self.decode = lambda ids: self.tok.decode(ids)
            self.eos = self.tok.eos_id()
        else:
            raise FileNotFoundError(f"no tokenizer.json or tokenizer.model in {path}")


def load(out_dir=None, model_dir=None, device="cpu"):
    """(model, encode, decode, eos_token_id) from a train.py out_dir or an official checkpoint directory."""
    if model_dir:
        model = MiniCPM.from_pretrained(model_dir, device=device).eval()
        tok = HFTokenizer(model_dir)
        return model, tok.encode, tok.decode, tok.eos
    model, cfg = model_from_checkpoint(out_dir, device)  # ckpt.pt or an FSDP run's ckpt_dcp
    enc = load_data(cfg["data"]).encoding()
    # ids past the tokenizer (the model's vocabulary padding) are dropped
    return model, enc.encode_ordinary, lambda ids: enc.decode([i for i in ids if i < enc.n_vocab]), enc.eot_token


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--out_dir", default="out", help="a train.py output directory (ckpt.pt)")
    src.add_argument("--model_dir", default=None, help="an official-format directory (config.json + weights)")
    p.add_argument("--prompt", default="The ")
    p.add_argument("--num_samples", type=int, default=2)
    p.add_argument("--max_new_tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=40)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    a = p.parse_args(argv)
    try:
        model, encode, decode, eos = load(None if a.model_dir else a.out_dir, a.model_dir, a.device)
        dtype = a.dtype if a.dtype != "auto" else ("bfloat16" if a.device.startswith("cuda") else "float32")
        model.to(getattr(torch, dtype))
        ids = encode(a.prompt)
        if not ids:
            raise ValueError("the prompt encodes to no tokens: give a non-empty --prompt")
        x = torch.tensor([ids], device=a.device)
        n = min(a.max_new_tokens, model.config.max_length - x.size(1))
        torch.manual_seed(a.seed)
        for _ in range(a.num_samples):
            y = model.generate(x, n, temperature=a.temperature, top_k=a.top_k, eos_token_id=eos)
            print(decode(y[0].tolist()))
            print("-" * 80)
    except (CheckpointError, FileNotFoundError, ImportError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
