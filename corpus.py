"""
Data: tokenizers, the embedded offline corpus, the prepare step for real corpora, and deterministic batches.

- Tokenizer: `get_encoding("bytes")` is a real `tiktoken.Encoding` over the 256 bytes plus a few special
  tokens: it needs no download, so `python train.py` works offline. `gpt2` / `cl100k_base` are tiktoken's BPEs
  (downloaded once by tiktoken, or read from TIKTOKEN_CACHE_DIR).
- Embedded corpus: the English documentation that ships inside Python itself (`pydoc_data.topics`, ~465 KB),
  tokenized once and cached under `data/embedded/`.
- Real corpora: `python corpus.py --input a.txt b.jsonl --tokenizer gpt2 --out data/web` (or `--hf_dataset`
  with the optional `datasets` package) writes memory-mapped `train.bin` / `val.bin` token files (uint16, or
  uint32 when the vocabulary exceeds 65535) and a `meta.json`.
- Batches: the global batch of step s is a function of (seed, s) only, so runs with any split into processes
  and micro-steps see the same tokens (PAPER.md §6: the batch is a property of the recipe, not the hardware).
"""

import argparse
import functools
import json
import os

import numpy as np
import tiktoken
import torch

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SPECIAL_TOKENS = ("<|endoftext|>", "<|user|>", "<|assistant|>")
# GPT-2's pre-tokenization regex; with byte-level ranks it only decides where BPE could merge, so any split works
_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.lru_cache(maxsize=None)
def get_encoding(name="bytes"):
    """A tiktoken Encoding: "bytes" (offline, vocab 256 + specials) or a tiktoken BPE name (gpt2, cl100k_base).
    Built once per name: batch builders (longctx.mixed_batch) ask for it every step."""
    if name == "bytes":
        return tiktoken.Encoding(name="bytes", pat_str=_PAT, mergeable_ranks={bytes([i]): i for i in range(256)},
                                 special_tokens={t: 256 + i for i, t in enumerate(SPECIAL_TOKENS)})
    if name not in tiktoken.list_encoding_names():
        raise ValueError(f"unknown tokenizer {name!r}: use 'bytes' or one of {', '.join(tiktoken.list_encoding_names())}")
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # no network and nothing cached: tiktoken raises a requests/urllib error
        raise RuntimeError(f"tiktoken BPE {name!r} is not cached and could not be downloaded ({type(e).__name__}): "
                           f"go online once, or point TIKTOKEN_CACHE_DIR at a cache holding it, "
                           f"or use tokenizer='bytes'") from None


def embedded_documents():
    """The offline default corpus: Python's own documentation topics (English prose with code)."""
    from pydoc_data.topics import topics
    return [topics[k] for k in sorted(topics)]


def read_documents(paths):
    """Documents from local .txt files (one document per file) and .jsonl files (a "text" field per line)."""
    docs = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input file {path} not found")
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                        docs.append(row["text"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(f"{path}:{i}: expected a JSON object with a \"text\" field") from None
            else:
                docs.append(f.read())
    return docs


def prepare(out_dir, docs, tokenizer="bytes", val_fraction=0.1, shard_tokens=0):
    """Tokenize documents (each followed by <|endoftext|>) into out_dir/{train,val}.bin + meta.json.
    The split is deterministic: the last val_fraction of the token stream is validation.
    shard_tokens > 0: stream the documents (any iterable, e.g. a hub dataset) into shards of about that many tokens,
    {train,val}_00000.bin ..., holding only one shard in memory; every 1/val_fraction-th document is validation."""
    if shard_tokens:
        return prepare_shards(out_dir, docs, tokenizer, val_fraction, shard_tokens)
    enc = get_encoding(tokenizer)
    eot = enc.eot_token
    ids = []
    for toks in enc.encode_ordinary_batch(list(docs)):
        ids.extend(toks)
        ids.append(eot)
    dtype = np.uint16 if enc.n_vocab <= 65536 else np.uint32
    arr = np.asarray(ids, dtype=dtype)
    n_val = max(1, int(len(arr) * val_fraction))
    os.makedirs(out_dir, exist_ok=True)
    for split, part in (("train", arr[:-n_val]), ("val", arr[-n_val:])):
        part.tofile(os.path.join(out_dir, f"{split}.bin.tmp"))
        os.replace(os.path.join(out_dir, f"{split}.bin.tmp"), os.path.join(out_dir, f"{split}.bin"))
    meta = dict(tokenizer=tokenizer, vocab_size=enc.n_vocab, dtype=np.dtype(dtype).name,
                train_tokens=len(arr) - n_val, val_tokens=n_val,
                bytes_per_token=sum(len(d.encode("utf-8")) + 1 for d in docs) / len(arr))
    _write_meta(out_dir, meta)
    return meta


def _write_meta(out_dir, meta):
    with open(os.path.join(out_dir, "meta.json.tmp"), "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(os.path.join(out_dir, "meta.json.tmp"), os.path.join(out_dir, "meta.json"))  # written last


def prepare_shards(out_dir, docs, tokenizer, val_fraction, shard_tokens, batch_docs=1024):
    import itertools
    enc = get_encoding(tokenizer)
    dtype = np.uint16 if enc.n_vocab <= 65536 else np.uint32
    every = max(1, round(1 / val_fraction)) if val_fraction > 0 else 0
    os.makedirs(out_dir, exist_ok=True)
    shards, buf, count = {"train": [], "val": []}, {"train": [], "val": []}, {"train": 0, "val": 0}
    n_bytes = n_docs = 0

    def flush(split):
        name = f"{split}_{len(shards[split]):05d}.bin"
        arr = np.asarray(buf[split], dtype=dtype)
        arr.tofile(os.path.join(out_dir, name + ".tmp"))
        os.replace(os.path.join(out_dir, name + ".tmp"), os.path.join(out_dir, name))
        shards[split].append(name)
        count[split] += len(arr)
        buf[split] = []

    it = iter(docs)
    while batch := list(itertools.islice(it, batch_docs)):
        for doc, toks in zip(batch, enc.encode_ordinary_batch(batch)):
            split = "val" if every and n_docs % every == 0 else "train"
            buf[split].extend(toks)
            buf[split].append(enc.eot_token)
            n_docs += 1
            n_bytes += len(doc.encode("utf-8")) + 1
            if len(buf[split]) >= shard_tokens:
                flush(split)
    for split in ("train", "val"):
        if buf[split] or not shards[split]:
            flush(split)
    meta = dict(tokenizer=tokenizer, vocab_size=enc.n_vocab, dtype=np.dtype(dtype).name, shards=shards,
                train_tokens=count["train"], val_tokens=count["val"],
                bytes_per_token=n_bytes / max(1, count["train"] + count["val"]))
    _write_meta(out_dir, meta)
    return meta


class TokenData:
    """Memory-mapped train/val tokens of a prepared directory (or "embedded", prepared on first use)."""

    def __init__(self, data="embedded"):
        path = os.path.join(DATA_DIR, "embedded") if data == "embedded" else data
        if data == "embedded" and not os.path.isfile(os.path.join(path, "meta.json")):
            prepare(path, embedded_documents())
        meta_file = os.path.join(path, "meta.json")
        if not os.path.isfile(meta_file):
            raise FileNotFoundError(f"data={data!r}: {meta_file} not found: run `python corpus.py --input FILES "
                                    f"--out {path}` first, or use data='embedded'")
        with open(meta_file) as f:
            self.meta = json.load(f)
        self.path, self.vocab_size = path, self.meta["vocab_size"]
        files = self.meta.get("shards", {s: [f"{s}.bin"] for s in ("train", "val")})
        self.shards = {s: [np.memmap(os.path.join(path, f), dtype=self.meta["dtype"], mode="r") for f in files[s]]
                       for s in ("train", "val")}
        # one array per split when the data is a single file (longctx reads it directly)
        self.split = {s: v[0] if len(v) == 1 else None for s, v in self.shards.items()}

    def draw(self, split, g, length, size=None):
        """Random windows of `length` tokens as (shard index, offset) arrays, uniform over all valid starts and never
        crossing a shard boundary; one call of g.integers, so a single file gives the offsets of earlier versions."""
        counts = np.array([max(0, len(a) - length) for a in self.shards[split]])
        if counts.sum() <= 0:
            raise ValueError(f"{split} split of {self.path} has no shard longer than {length} tokens: lower seq_len "
                             f"or prepare more data")
        idx = np.atleast_1d(g.integers(0, counts.sum(), size=size))
        ends = np.cumsum(counts)
        shard = np.searchsorted(ends, idx, side="right")
        return shard, idx - (ends[shard] - counts[shard])

    def read(self, split, shard, offset, length):
        """The windows (shard, offset) as an int64 array (n, length); only their pages of the memmaps are read."""
        return np.stack([self.shards[split][s][o:o + length].astype(np.int64) for s, o in zip(shard, offset)])

    def encoding(self):
        return get_encoding(self.meta["tokenizer"])

    def batch(self, split, seed, step, global_batch, seq_len, rows=None):
        """Rows `rows` (a slice) of the global batch of `step`: (x, y) int64 tensors of shape (rows, seq_len).
        The offsets depend on (seed, split, step) only."""
        g = np.random.default_rng([seed, 0 if split == "train" else 1, step])
        shard, offset = self.draw(split, g, seq_len + 1, size=global_batch)
        if rows is not None:  # each process reads only its rows
            shard, offset = shard[rows], offset[rows]
        t = torch.from_numpy(self.read(split, shard, offset, seq_len + 1))
        return t[:, :-1], t[:, 1:]


def main():
    p = argparse.ArgumentParser(description="Tokenize a corpus into memory-mapped train.bin / val.bin")
    p.add_argument("--input", nargs="*", default=[], help=".txt files (one document each) or .jsonl ({'text': ...})")
    p.add_argument("--hf_dataset", default=None, help="a hub dataset name (needs `pip install datasets` and network)")
    p.add_argument("--hf_split", default="train")
    p.add_argument("--hf_max_docs", type=int, default=100_000, help="with --shard_tokens, streamed: set it high")
    p.add_argument("--tokenizer", default="bytes", help="bytes | gpt2 | cl100k_base ...")
    p.add_argument("--out", required=True)
    p.add_argument("--val_fraction", type=float, default=0.1)
    p.add_argument("--shard_tokens", type=int, default=0,
                   help="stream into shards of this many tokens (web-scale corpora; 0: one train.bin / val.bin)")
    a = p.parse_args()
    try:
        docs = read_documents(a.input)
    except (FileNotFoundError, ValueError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: {e}") from None
    if a.hf_dataset:
        try:
            import datasets
        except ImportError:
            raise SystemExit("error: --hf_dataset needs the optional package: pip install datasets") from None
        import itertools
        ds = datasets.load_dataset(a.hf_dataset, split=a.hf_split, streaming=True)
        hub = (row["text"] for row, _ in zip(ds, range(a.hf_max_docs)))
        docs = itertools.chain(docs, hub) if a.shard_tokens else docs + list(hub)  # shards: streamed, never all held
    elif not docs:
        raise SystemExit("error: no documents: give --input files or --hf_dataset")
    try:
        meta = prepare(a.out, docs, a.tokenizer, a.val_fraction, a.shard_tokens)
    except (RuntimeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
