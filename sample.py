"""
Sample from a trained model (nanoGPT's sample.py habit), with model.generate's KV cache.

    python sample.py --out_dir=out --prompt="The " --max_new_tokens=300    # a train.py checkpoint
    python sample.py --model_dir=path/to/MiniCPM-1B-sft-bf16 --prompt="..."   # an official checkpoint directory

An official directory's tokenizer is read from tokenizer.json (optional package `tokenizers`) or tokenizer.model
(optional package `sentencepiece`): tokenizer.get_encoding; a prompt starts with <s> where the tokenizer starts
texts with one.
"""

import argparse
import functools
import math

import torch

from checkpoint import CheckpointError, model_from_checkpoint
from configurator import ConfigError, exit_on_user_error
from official import from_pretrained
from system import resolve_system
from tokenizer import decode_ids, get_encoding, tokenizer_of, with_bos


def load(out_dir=None, model_dir=None, device="cpu"):
    """(model, encode, decode, eos_token_id) from a train.py out_dir or an official checkpoint directory, with the
    tokenizer it carries (a run's, or the directory's own)."""
    if model_dir:
        model = from_pretrained(model_dir, device=device).eval()
        name = tokenizer_of(model_dir)
        if name is None:
            raise FileNotFoundError(f"no tokenizer in {model_dir} (tokenizer.json, tokenizer.model or tiktoken.json): "
                                    f"copy the checkpoint's tokenizer files into it")
    else:
        model, _, name, _ = model_from_checkpoint(out_dir, device)  # ckpt.pt or an FSDP run's ckpt_dcp
    enc = get_encoding(name)
    return model, lambda s: with_bos(enc, enc.encode_ordinary(s)), functools.partial(decode_ids, enc), enc.eot_token


@torch.no_grad()
def generate_text(model, enc, prompt, max_new_tokens, temperature=0.8, top_k=40):
    """A sample from a model with its tokenizer (train.py's end-of-run sample), ids past the tokenizer (the
    vocabulary padding) dropped."""
    model.eval()
    x = torch.tensor([with_bos(enc, enc.encode_ordinary(prompt))], device=next(model.parameters()).device)
    out = model.generate(x, min(max_new_tokens, model.config.max_length - x.size(1)), temperature=temperature,
                         top_k=top_k)
    return decode_ids(enc, out[0].tolist())


def check_sampling(a):
    """The sampling flags as one line each: a count >= 1, a finite temperature >= 0, top_k >= 0, a UTF-8 prompt."""
    for key in ("max_new_tokens", "num_samples"):
        if getattr(a, key) < 1:
            raise ConfigError(f"--{key}={getattr(a, key)} must be >= 1")
    if not (math.isfinite(a.temperature) and a.temperature >= 0):
        raise ConfigError(f"--temperature={a.temperature} must be a finite number >= 0 (0: greedy; a negative one "
                          f"would sample the inverted distribution)")
    if a.top_k < 0:
        raise ConfigError(f"--top_k={a.top_k} must be >= 0 (1: greedy, 0: every token)")
    try:
        a.prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # a byte that is not UTF-8 reaches Python as a lone surrogate
        raise ConfigError(f"--prompt is not valid UTF-8 (a stray byte at character {e.start}): give UTF-8 text") \
            from None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--out_dir", default="out", help="a train.py output directory (ckpt.pt)")
    src.add_argument("--model_dir", default=None, help="an official-format directory (config.json + weights)")
    p.add_argument("--prompt", default="The ")
    p.add_argument("--num_samples", type=int, default=2)
    p.add_argument("--max_new_tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8, help="> 0; 0: greedy")
    p.add_argument("--top_k", type=int, default=40, help="sample from the k most likely tokens; 1: greedy; 0: all")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto: cuda if available, else cpu")
    p.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    a = p.parse_args(argv)

    def work():
        check_sampling(a)
        device, dtype, _ = resolve_system(a.device, a.dtype, False)  # the checks train.py makes, one line each
        model, encode, decode, eos = load(None if a.model_dir else a.out_dir, a.model_dir, device)
        model.to(dtype)
        ids = encode(a.prompt)
        if not ids:
            raise ConfigError("the prompt encodes to no tokens: give a non-empty --prompt")
        room = model.config.max_length - len(ids)
        if room < 1:
            raise ConfigError(f"the prompt is {len(ids)} tokens and the model supports {model.config.max_length}: "
                              f"shorten --prompt to leave room for new tokens")
        x = torch.tensor([ids], device=device)
        n = min(a.max_new_tokens, room)
        torch.manual_seed(a.seed)
        for _ in range(a.num_samples):
            y = model.generate(x, n, temperature=a.temperature, top_k=a.top_k or None, eos_token_id=eos)
            print(decode(y[0].tolist()))
            print("-" * 80)
    exit_on_user_error(work, CheckpointError, ValueError)


if __name__ == "__main__":
    main()
