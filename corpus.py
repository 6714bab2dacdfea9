"""
Data: the embedded offline corpus, the prepare step for real corpora, and deterministic batches (the tokenizers
themselves, ours and a released checkpoint's, are tokenizer.py).

- Embedded corpus: the English documentation that ships inside Python itself (`pydoc_data.topics`, ~465 KB),
  tokenized once and cached under `data/embedded/`. A larger offline corpus, `python_source`: the source of
  Python's own standard library (~30 MB of .py files for Python 3.11, tests included; the exact text depends on
  the Python version), cached under `data/python_source/` on first use (~1 minute). Experiments that would repeat
  the embedded corpus several times use it (each run reports its `epochs`).
- Real corpora: `python corpus.py --input a.txt b.jsonl --tokenizer gpt2 --out data/web` (or `--hf_dataset`
  with the optional `datasets` package) writes memory-mapped `train.bin` / `val.bin` token files (uint16, or
  uint32 when the vocabulary exceeds 65535) and a `meta.json` naming the tokenizer. `--tokenizer DIR` tokenizes
  with a released checkpoint's own tokenizer (MiniCPM-2.4B: 122,753 ids, uint32).
- Web scale: `--shard_tokens N` streams the documents (local files or a hub dataset) into shards of ~N tokens;
  windows never cross a shard and each process reads only its rows.
- Instruction data: `{"prompt", "response"}` / chat `{"messages"}` jsonl under the tokenizer's chat format
  (tokenizer.chat_ids: ours, a checkpoint's template, or the MiniCPM SFT format),
  as SFT rows (`SFTData`, loss on the responses only) or mixed with pre-training data (`MixtureData`, the decay
  phase of two-stage pre-training).
- Batches: the global batch of step s is a function of (seed, s) only, so runs with any split into processes
  and micro-steps see the same tokens (paper §3.2: the batch is a property of the recipe, not the hardware).
"""

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import sysconfig

import numpy as np
import torch

from configurator import ConfigError, exit_on_user_error
from files import locked, make_dirs, open_regular, parse_json, read_json, replace_atomically, write_json
from tokenizer import (chat_pieces, data_tokenizer_id, get_encoding, ids_and_labels, known_tokenizers, tokenizer_id,
                       train_bpe, with_bos)

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def embedded_documents():
    """The offline default corpus: Python's own documentation topics (English prose with code)."""
    from pydoc_data.topics import topics
    return [topics[k] for k in sorted(topics)]


def python_source_documents():
    """The source files of Python's standard library (site-packages excluded), in sorted path order."""
    root = sysconfig.get_paths()["stdlib"]
    docs = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in ("site-packages", "__pycache__"))
        for f in sorted(files):
            if f.endswith(".py"):
                with open(os.path.join(d, f), encoding="utf-8", errors="replace") as fh:
                    docs.append(fh.read())
    return docs


BUILTIN = {"embedded": embedded_documents, "python_source": python_source_documents}  # offline, prepared on first use


def read_documents(paths):
    """Documents from local .txt files (one document per file) and .jsonl files (a "text" field per line)."""
    docs = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input file {path} not found")
        try:
            docs += read_document_file(path)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): give "
                             f"text files, or convert this one to UTF-8") from None
    return docs


def read_document_file(path):
    """The documents of one input file: the file itself (.txt), or the "text" string of each line (.jsonl)."""
    with open(path, encoding="utf-8") as f:
        if not path.endswith(".jsonl"):
            return [f.read()]
        docs = []
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
                raise ValueError(f"{path}:{i}: expected a JSON object with a \"text\" field") from None
            if not isinstance(text, str):
                raise ValueError(f"{path}:{i}: the \"text\" field is {type(text).__name__}, not a string")
            docs.append(text)
        return docs


def bpe_corpus(source="python_source", vocab_size=1024):
    """data/<source>_bpe<vocab_size>: a BUILTIN corpus tokenized with a byte-level BPE of vocab_size tokens trained
    on its training part (the documents before the last tenth of its characters; optional package `tokenizers`),
    prepared on first use. Returns the directory (train.py's data)."""
    out = os.path.join(DATA_DIR, f"{source}_bpe{vocab_size}")
    if not os.path.isfile(os.path.join(out, "meta.json")):
        docs = BUILTIN[source]()
        ends = np.cumsum([len(d) for d in docs])
        train_bpe(docs[:int(np.searchsorted(ends, 0.9 * ends[-1]))], vocab_size, os.path.join(out, "tokenizer"))
        prepare(out, docs, tokenizer=os.path.join(out, "tokenizer"), wait=True)
    return out


def prepare(out_dir, docs, tokenizer="bytes", val_fraction=0.1, shard_tokens=0, wait=False):
    """Tokenize documents (each followed by <|endoftext|>) into out_dir/{train,val}.bin + meta.json.
    The split is deterministic: the last val_fraction of the token stream is validation.
    shard_tokens > 0: stream the documents (any iterable, e.g. a hub dataset) into shards of about that many tokens,
    {train,val}_00000.bin ..., holding only one shard in memory; every 1/val_fraction-th document is validation.
    The directory is locked while it is prepared: another prepare() there stops in one line, or with wait=True (a
    builtin corpus on first use) waits and keeps what the other one wrote."""
    if not 0 <= val_fraction < 1:  # (nan fails this too)
        raise ValueError(f"val_fraction={val_fraction} must be within [0, 1): the share of tokens held out")
    if shard_tokens < 0:
        raise ValueError(f"shard_tokens={shard_tokens} must be >= 0 (0: one train.bin / val.bin)")
    busy = None if wait else lambda holder: ValueError(f"{out_dir} is being prepared by another process ({holder}): "
                                                       f"wait for it, or write into another --out")
    with locked(out_dir, busy):
        meta = os.path.join(out_dir, "meta.json")
        if wait and os.path.isfile(meta):  # the process waited for prepared it
            return read_json(meta)
        with contextlib.suppress(FileNotFoundError):  # until the new files are whole, the directory is not data
            os.unlink(meta)
        if shard_tokens:
            return prepare_shards(out_dir, docs, tokenizer, val_fraction, shard_tokens)
        return prepare_one(out_dir, docs, tokenizer, val_fraction)


def prepare_one(out_dir, docs, tokenizer, val_fraction):
    enc = get_encoding(tokenizer)
    dtype = np.uint16 if enc.n_vocab <= 65536 else np.uint32
    docs = list(docs)
    parts = [np.asarray(document(enc, toks), dtype=dtype) for toks in enc.encode_ordinary_batch(docs)]
    arr = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    if len(arr) < 2 or not any(d.strip() for d in docs):
        raise ValueError("the documents are empty: no tokens to train on (check the --input files)")
    n_val = max(1, int(len(arr) * val_fraction))
    make_dirs(out_dir)
    for split, part in (("train", arr[:-n_val]), ("val", arr[-n_val:])):
        replace_atomically(os.path.join(out_dir, f"{split}.bin"), part.tofile, need=part.nbytes)
    meta = dict(**tokenizer_meta(enc, tokenizer), vocab_size=enc.n_vocab, dtype=np.dtype(dtype).name,
                train_tokens=len(arr) - n_val, val_tokens=n_val, max_token_id=int(arr.max()),
                bytes_per_token=sum(document_bytes(enc, d) for d in docs) / len(arr))
    _write_meta(out_dir, meta)
    return meta


def document(enc, toks):
    """A document's ids in the token files: <s> first where the tokenizer starts texts with one, <|endoftext|> (its
    end-of-text token) last."""
    return with_bos(enc, toks) + [enc.eot_token]


def document_bytes(enc, text):
    """The bytes a document stands for in bits per byte: its UTF-8 text, and one for each special token around it."""
    return len(text.encode("utf-8")) + 1 + (getattr(enc, "bos_token", None) is not None)


def tokenizer_meta(enc, tokenizer):
    """meta.json's tokenizer fields: its name, and for a directory's tokenizer its absolute path and its id
    (tokenizer.tokenizer_id: the hash of its tokenizer file; a name is its own id)."""
    if not hasattr(enc, "id"):  # one of ours
        return dict(tokenizer=tokenizer)
    return dict(tokenizer=enc.path, tokenizer_id=enc.id)


def _write_meta(out_dir, meta):
    write_json(os.path.join(out_dir, "meta.json"), meta)  # written last: a directory without it is not data


def prepare_shards(out_dir, docs, tokenizer, val_fraction, shard_tokens, batch_docs=1024):
    enc = get_encoding(tokenizer)
    dtype = np.uint16 if enc.n_vocab <= 65536 else np.uint32
    every = max(1, round(1 / val_fraction)) if val_fraction > 0 else 0
    os.makedirs(out_dir, exist_ok=True)
    shards, buf, count = {"train": [], "val": []}, {"train": [], "val": []}, {"train": 0, "val": 0}
    n_bytes = n_docs = max_id = 0

    def flush(split):
        name = f"{split}_{len(shards[split]):05d}.bin"
        nonlocal max_id
        arr = np.asarray(buf[split], dtype=dtype)
        max_id = max(max_id, int(arr.max())) if len(arr) else max_id
        replace_atomically(os.path.join(out_dir, name), arr.tofile, need=arr.nbytes)
        shards[split].append(name)
        count[split] += len(arr)
        buf[split] = []

    it = iter(docs)
    while batch := list(itertools.islice(it, batch_docs)):
        for doc, toks in zip(batch, enc.encode_ordinary_batch(batch)):
            split = "val" if every and n_docs % every == 0 else "train"
            buf[split].extend(document(enc, toks))
            n_docs += 1
            n_bytes += document_bytes(enc, doc)
            if len(buf[split]) >= shard_tokens:
                flush(split)
    if not n_docs or not n_bytes - n_docs:
        raise ValueError("the documents are empty: no tokens to train on (check the --input files / dataset)")
    for split in ("train", "val"):
        if buf[split] or not shards[split]:
            flush(split)
    meta = dict(**tokenizer_meta(enc, tokenizer), vocab_size=enc.n_vocab, dtype=np.dtype(dtype).name, shards=shards,
                train_tokens=count["train"], val_tokens=count["val"], max_token_id=max_id,
                bytes_per_token=n_bytes / max(1, count["train"] + count["val"]))
    _write_meta(out_dir, meta)
    return meta


META_FIELDS = dict(tokenizer=str, vocab_size=int, dtype=str, train_tokens=int, val_tokens=int, bytes_per_token=float)


def check_meta(meta, meta_file):
    """A prepared directory's meta.json, checked field by field before anything trains on it (a missing
    bytes_per_token would otherwise fail at the first evaluation, the work lost): one line naming the field."""
    fix = f"prepare the data again (python corpus.py --input FILES --out {os.path.dirname(meta_file) or '.'})"
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file} holds a {type(meta).__name__}, not an object of fields: {fix}")
    for key, kind in META_FIELDS.items():
        v = meta.get(key)
        ok = isinstance(v, (int, float) if kind is float else kind) and not isinstance(v, bool)
        if not ok or (kind in (int, float) and not (v > 0 or (key == "val_tokens" and v == 0))):
            raise ValueError(f"{meta_file}: field {key}={v!r} must be a{' positive' if kind is not str else ''} "
                             f"{'number' if kind is float else kind.__name__}: {fix}")
    if meta["tokenizer"] not in known_tokenizers() and not isinstance(meta.get("tokenizer_id"), str):
        raise ValueError(f"{meta_file}: tokenizer {meta['tokenizer']!r} is not one of {', '.join(known_tokenizers())} "
                         f"and has no tokenizer_id (a checkpoint's tokenizer records one): {fix}")
    return meta


def rows_fingerprint(path, tokenizer, enc):
    """The content of a jsonl file of chat rows as a run reads it: its bytes, the tokenizer and its chat template."""
    template = getattr(enc, "chat_template", None) or ""
    with open_regular(path, "rb") as f:
        return digest(f.read(), tokenizer_id(tokenizer).encode(), template.encode())


def digest(*parts):
    """A short content hash of byte strings (what a run checks its data against on resume)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


class TokenData:
    """Memory-mapped train/val tokens of a prepared directory (or a BUILTIN corpus, prepared on first use)."""

    def __init__(self, data="embedded"):
        path = os.path.join(DATA_DIR, data) if data in BUILTIN else data
        if data in BUILTIN and not os.path.isfile(os.path.join(path, "meta.json")):
            prepare(path, BUILTIN[data](), wait=True)
        meta_file = os.path.join(path, "meta.json")
        if not os.path.isfile(meta_file):
            raise FileNotFoundError(f"data={data!r}: {meta_file} not found: run `python corpus.py --input FILES "
                                    f"--out {path}` first, or use data='embedded'")
        self.meta = check_meta(read_json(meta_file, None, "prepare the data again"), meta_file)
        self.path, self.vocab_size = path, self.meta["vocab_size"]
        files = self.meta.get("shards", {s: [f"{s}.bin"] for s in ("train", "val")})
        if not (isinstance(files, dict) and all(isinstance(files.get(s), list) and all(
                isinstance(f, str) and f == os.path.basename(f) and f not in ("", ".", "..") for f in files[s])
                for s in ("train", "val"))):
            raise ValueError(f"{meta_file}: shards must list file names in its own directory: prepare the data again")
        self.shards = {s: [self._open(os.path.join(path, f)) for f in files[s]] for s in ("train", "val")}
        for s in ("train", "val"):  # what meta.json promises, checked before any step trains on it
            n = sum(len(a) for a in self.shards[s])
            if n != self.meta[f"{s}_tokens"]:
                raise ValueError(f"{path}: the {s} files hold {n:,} tokens but {meta_file} says "
                                 f"{self.meta[f'{s}_tokens']:,} (a truncated copy?): prepare the data again")
        largest = self.meta.get("max_token_id")
        if largest is None:  # data prepared before max_token_id was recorded: find it once
            largest = max(int(a.max()) for v in self.shards.values() for a in v if len(a))
        if largest >= self.vocab_size:
            raise ValueError(f"{path}: token id {largest} is past the tokenizer's vocabulary ({self.vocab_size}, "
                             f"{self.meta['tokenizer']}): the files or meta.json are corrupt; prepare the data again")
        # one array per split when the data is a single file (longctx reads it directly)
        self.split = {s: v[0] if len(v) == 1 else None for s, v in self.shards.items()}

    def fingerprint(self):
        """What the tokens are, cheaply: meta.json's fields and the first and last 64k tokens of each split (the same
        text prepared again gives the same fingerprint, other text another)."""
        ends = [bytes(a[:65536]) + bytes(a[-65536:]) for s in ("train", "val") for a in self.shards[s][:1]]
        return digest(json.dumps(self.meta, sort_keys=True).encode(), *ends)

    def _open(self, file):
        dtype = self.meta.get("dtype")
        need = np.uint16 if self.vocab_size <= 65536 else np.uint32  # what prepare() writes for this vocabulary
        if dtype != np.dtype(need).name:
            raise ValueError(f"{self.path}/meta.json: dtype {dtype!r} does not match a vocabulary of "
                             f"{self.vocab_size} (prepare() writes {np.dtype(need).name}): fix meta.json or prepare "
                             f"the data again")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file} (listed in {self.path}/meta.json) not found: prepare the data again")
        size = os.path.getsize(file)
        if size % np.dtype(need).itemsize:
            raise ValueError(f"{file}: {size} bytes is not a whole number of {dtype} tokens (truncated?): prepare "
                             f"the data again")
        if size == 0:
            return np.zeros(0, dtype=need)  # (np.memmap cannot map an empty file)
        return np.memmap(file, dtype=need, mode="r")

    def check_length(self, length):
        """A clear error now, not at the first evaluation, when a split has no window of `length` tokens."""
        for s in ("train", "val"):
            if not any(len(a) > length for a in self.shards[s]):
                raise ValueError(f"the {s} split of {self.path} has no stretch longer than seq_len + 1 = {length} "
                                 f"tokens ({sum(len(a) for a in self.shards[s]):,} in all): lower seq_len or "
                                 f"prepare more data")

    def draw(self, split, g, length, size=None):
        """Random windows of `length` tokens as (shard index, offset) arrays, uniform over all valid starts and never
        crossing a shard boundary; one call of g.integers, so a single file's offsets follow from the seed alone."""
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
        """The tokenizer the tokens were made with; a directory's must still be there, and unchanged."""
        name = self.meta["tokenizer"]
        if name not in known_tokenizers() and not os.path.isdir(name):
            raise ValueError(f"{self.path} was tokenized with the tokenizer in {name}, which is not there any more: "
                             f"put the directory back (the token files need nothing else)")
        if tokenizer_id(name) != data_tokenizer_id(self.meta):
            raise ValueError(f"the tokenizer in {name} is {tokenizer_id(name)}, but {self.path} was tokenized with "
                             f"{data_tokenizer_id(self.meta)}: prepare the data again with it")
        return get_encoding(name)

    def batch(self, split, seed, step, global_batch, seq_len, rows=None):
        """Rows `rows` (a slice) of the global batch of `step`: (x, y) int64 tensors of shape (rows, seq_len).
        The offsets depend on (seed, split, step) only."""
        g = np.random.default_rng([seed, 0 if split == "train" else 1, step])
        shard, offset = self.draw(split, g, seq_len + 1, size=global_batch)
        if rows is not None:  # each process reads only its rows
            shard, offset = shard[rows], offset[rows]
        t = torch.from_numpy(self.read(split, shard, offset, seq_len + 1))
        return t[:, :-1], t[:, 1:]


# ------------------------------------------------------------------------------------------------------------
# instruction data (SFT, DPO) and data mixtures (the decay phase of two-stage pre-training, paper §5)

def read_jsonl_rows(path, fields):
    """Rows of a jsonl file as dicts; a malformed row stops with its line number and what is wrong with it.
    fields: the required non-empty string fields, or "chat" for {"prompt", "response"} / {"messages": [...]}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} not found")
    rows = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            where = f"{path}:{i}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not UTF-8 text (byte {e.start} of the line): re-encode the file") from None
            if not line.strip():
                continue
            row = parse_json(line, where)
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object")
            if fields == "chat":
                row = dict(turns=_chat_turns(row, where))
            else:
                _require_text(row, fields, where, ", ".join(repr(f) for f in fields))
            rows.append({**row, "_line": i})  # the file's line number, for errors found later (too long ...)
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows


def _chat_turns(row, where):
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}}")
        turns = []
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant") \
                    or not isinstance(m.get("content"), str) or not m["content"].strip():
                raise ValueError(f"{where}: messages[{j}] needs role 'user' or 'assistant' and non-empty content")
            turns.append((m["role"], m["content"]))
        if turns[-1][0] != "assistant":
            raise ValueError(f"{where}: the last message must be the assistant's (the response to train on)")
        return turns
    _require_text(row, ("prompt", "response"), where, "'prompt' and 'response', or 'messages'")
    return [("user", row["prompt"]), ("assistant", row["response"])]


def _require_text(row, fields, where, needs):
    for k in fields:
        if not isinstance(row.get(k), str) or not row[k].strip():
            raise ValueError(f"{where}: field {k!r} is {'missing' if k not in row else 'empty or not a string'} "
                             f"(each row needs non-empty {needs})")


class SFTData:
    """Prompt/response examples of a jsonl file as training rows under the tokenizer's chat format (tokenizer.py):
    one example per row, padded with the end-of-text token, labels -100 on the prompt and the padding. Every 10th
    example is validation."""

    def __init__(self, path, tokenizer="bytes"):
        self.path, self.enc = path, get_encoding(tokenizer)
        self.vocab_size = self.enc.n_vocab
        self._digest = rows_fingerprint(path, tokenizer, self.enc)
        rows = read_jsonl_rows(path, "chat")
        pieces = [chat_pieces(self.enc, r["turns"]) for r in rows]  # (each row tokenized once)
        ex = [ids_and_labels(p) for p in pieces]
        for r, (_, labels) in zip(rows, ex):  # (its loss would be 0/0: nan at step 1, read as a divergence)
            if all(t == -100 for t in labels[1:]):
                raise ValueError(f"{path} line {r.get('_line', '?')}: no response token is trained under "
                                 f"{tokenizer}'s chat format (an empty response, or a template that drops it)")
        self.split = {"train": [e for i, e in enumerate(ex) if i % 10],
                      "val": [e for i, e in enumerate(ex) if not i % 10]}
        if not self.split["train"]:
            self.split["train"] = self.split["val"]
        # val_bpb: the loss covers the response tokens only (each with its end-of-text token, counted as one byte
        # as in prepare()), so bytes per token is over those; exactly 1 for the byte tokenizer
        n_bytes = sum(n for p in pieces for _, trained, n in p if trained)
        n_tokens = sum(len(ids) for p in pieces for ids, trained, _ in p if trained)
        self.meta = dict(**tokenizer_meta(self.enc, tokenizer), bytes_per_token=n_bytes / max(1, n_tokens))
        self.longest = max(len(e[0]) for e in ex)

    def fingerprint(self):
        """The file's bytes and the tokenizer its rows are encoded with."""
        return self._digest

    def encoding(self):
        return self.enc

    def draw(self, split, g, n):
        """The indices of n examples drawn with g."""
        return g.integers(0, len(self.split[split] or self.split["train"]), size=n)

    def read(self, split, idx, seq_len):
        """Examples idx as (x, y) int64 arrays (len(idx), seq_len)."""
        pool = self.split[split] or self.split["train"]
        x = np.full((len(idx), seq_len), self.enc.eot_token, dtype=np.int64)
        y = np.full((len(idx), seq_len), -100, dtype=np.int64)
        for r, i in enumerate(idx):
            ids, labels = pool[i]
            if len(ids) > seq_len + 1:
                raise ValueError(f"an example of {self.path} has {len(ids)} tokens, more than seq_len + 1 = "
                                 f"{seq_len + 1}: raise seq_len (the longest has {self.longest})")
            x[r, :len(ids) - 1] = ids[:-1]
            y[r, :len(ids) - 1] = labels[1:]
        return x, y

    def batch(self, split, seed, step, global_batch, seq_len, rows=None):
        idx = self.draw(split, np.random.default_rng([seed, 4 if split == "train" else 5, step]), global_batch)
        x, y = self.read(split, idx if rows is None else idx[rows], seq_len)  # only the rows asked for
        return torch.from_numpy(x), torch.from_numpy(y)


def parse_mixture(spec):
    """"src[:weight],src[:weight]" -> [(src, weight)]; a src is a BUILTIN corpus, a prepared directory or a .jsonl
    file of prompt/response examples; weights are normalised (a 0 weight only names the tokenizer)."""
    parts = []
    for item in spec.split(","):
        src, _, w = item.strip().rpartition(":") if item.count(":") else ("", "", "")
        if not src:
            src, w = item.strip(), "1"
        try:
            w = float(w)
        except ValueError:
            raise ValueError(f"data mixture {spec!r}: weight {w!r} of {src!r} is not a number "
                             f"(write src:weight,src:weight)") from None
        if w < 0 or not src:
            raise ValueError(f"data mixture {spec!r}: each part is src[:weight] with weight >= 0")
        parts.append((src, w))
    if sum(w for _, w in parts) <= 0:
        raise ValueError(f"data mixture {spec!r}: the weights sum to 0")
    return parts


class MixtureData:
    """Rows drawn from several sources with the given weights (each row's source and content a function of
    (seed, step) only): pre-training token data and SFT-formatted examples, as in the paper's decay phase.
    Validation, bytes per token and the tokenizer are those of the first token source (else the first source).
    The .jsonl rows are tokenized with `tokenizer` (a run's model's) when given, else with the token sources'
    tokenizer, else with the byte tokenizer; token sources under two tokenizers are one line of error."""

    def __init__(self, spec, tokenizer=None):
        self.spec = spec
        self.parts = parse_mixture(spec)
        tok = [TokenData(s) for s, _ in self.parts if not s.endswith(".jsonl")]
        for d in tok[1:]:
            if data_tokenizer_id(d.meta) != data_tokenizer_id(tok[0].meta):
                raise ValueError(f"data mixture {spec!r}: {tok[0].path} is tokenized with "
                                 f"{data_tokenizer_id(tok[0].meta)} and {d.path} with {data_tokenizer_id(d.meta)}: "
                                 f"prepare every part with one tokenizer")
        tokenizer = tokenizer or (tok[0].meta["tokenizer"] if tok else "bytes")
        it = iter(tok)
        self.sources = [SFTData(s, tokenizer) if s.endswith(".jsonl") else next(it) for s, _ in self.parts]
        self.weights = np.array([w for _, w in self.parts]) / sum(w for _, w in self.parts)
        self.main = tok[0] if tok else self.sources[0]
        self.meta, self.vocab_size = self.main.meta, max(s.vocab_size for s in self.sources)
        self.longest = max([s.longest for s in self.sources if isinstance(s, SFTData)], default=0)

    def encoding(self):
        return self.main.encoding()

    def fingerprint(self):
        """Every source's fingerprint and the weights."""
        return digest(*(s.fingerprint().encode() for s in self.sources), self.weights.tobytes())

    def check_length(self, length):
        for s in self.sources:
            if isinstance(s, TokenData):
                s.check_length(length)

    def batch(self, split, seed, step, global_batch, seq_len, rows=None):
        if len(self.sources) == 1:
            return self.sources[0].batch(split, seed, step, global_batch, seq_len, rows)
        g = np.random.default_rng([seed, 6 if split == "train" else 7, step])
        which = g.choice(len(self.sources), size=global_batch, p=self.weights)
        wanted = np.zeros(global_batch, dtype=bool)
        wanted[slice(None) if rows is None else rows] = True
        out = np.flatnonzero(wanted)  # the rows asked for: only they are read
        x = np.empty((len(out), seq_len), dtype=np.int64)
        y = np.empty((len(out), seq_len), dtype=np.int64)
        for k, src in enumerate(self.sources):
            sel = np.flatnonzero(which == k)
            if len(sel) == 0:
                continue
            sub = np.random.default_rng([seed, 8, step, k])  # this source's draws for the whole global batch
            keep, dst = wanted[sel], np.searchsorted(out, sel[wanted[sel]])
            if not keep.any():
                continue
            if isinstance(src, SFTData):
                x[dst], y[dst] = src.read(split, src.draw(split, sub, len(sel))[keep], seq_len)
            else:
                shard, offset = src.draw(split, sub, seq_len + 1, len(sel))
                w = src.read(split, shard[keep], offset[keep], seq_len + 1)
                x[dst], y[dst] = w[:, :-1], w[:, 1:]
        return torch.from_numpy(x), torch.from_numpy(y)


def load_eval_sets(spec, data, length):
    """{name: TokenData} of a comma-separated list of held-out sets, each under the tokenizer of `data` and with a
    window of `length` tokens."""
    sets = {}
    for name in filter(None, (n.strip() for n in spec.split(","))):
        d = load_data(name)
        if isinstance(d, MixtureData) or d.meta["tokenizer"] != data.meta.get("tokenizer"):
            raise ValueError(f"eval_data {name!r} must be token data under the run's tokenizer "
                             f"({data.meta.get('tokenizer')}), not a mixture or .jsonl")
        d.check_length(length)
        sets[name] = d
    return sets


def epochs(data, tokens, passkey_ratio=0.0):
    """How many times `tokens` of training go over the training split of `data` (None for SFT rows / mixtures);
    a fraction passkey_ratio of the rows is generated passkey documents (longctx.py), which read no corpus."""
    n = getattr(data, "meta", {}).get("train_tokens")
    return round(tokens * (1 - passkey_ratio) / n, 3) if n else None


def corpus_keys(spec, bytes_only=""):
    """The train.py keys that point an experiment's runs at corpus `spec` (a BUILTIN name or a directory that main()
    prepared): data, and vocab_size when its tokenizer has more tokens than the models' default 320 (padded to a
    multiple of 64). bytes_only: why an experiment needs the byte tokenizer (its own task data is byte-level)."""
    try:
        d = TokenData(spec)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"--data: {e}") from None
    if bytes_only and d.meta["tokenizer"] != "bytes":
        raise ConfigError(f"--data={spec} is tokenized with {d.meta['tokenizer']}, but {bytes_only}: prepare it "
                          f"with --tokenizer bytes (python corpus.py --input ... --tokenizer bytes --out DIR)")
    return dict(data=spec) if d.vocab_size <= 320 else dict(data=spec, vocab_size=-(-d.vocab_size // 64) * 64)


def load_data(spec, tokenizer=None):
    """TokenData for one token source (as before), MixtureData for a mixture or any .jsonl source (its rows
    tokenized with `tokenizer` when given: MixtureData)."""
    if "," in spec or spec.endswith(".jsonl") or ":" in spec.split("/")[-1]:
        return MixtureData(spec, tokenizer)
    return TokenData(spec)


def hub_documents(rows, field, max_docs, name="the dataset"):
    """The texts of the first max_docs rows of a (streamed) hub dataset, read from `field`; a row without it, or
    whose field is not a string, is one line naming the row and the fields it has."""
    for i, row in zip(range(max_docs), rows):
        text = row.get(field) if isinstance(row, dict) else None
        if not isinstance(text, str):
            fields = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{name} row {i}: no string field {field!r} (its fields: {fields}): set --hf_text_field")
        yield text


def main(argv=None):
    p = argparse.ArgumentParser(description="Tokenize a corpus into memory-mapped train.bin / val.bin")
    p.add_argument("--input", nargs="*", default=[], help=".txt files (one document each) or .jsonl ({'text': ...})")
    p.add_argument("--hf_dataset", default=None, help="a hub dataset name (needs `pip install datasets` and network), "
                   "e.g. HuggingFaceFW/fineweb-edu")
    p.add_argument("--hf_config", default=None, help="its subset / config name, e.g. sample-10BT")
    p.add_argument("--hf_text_field", default="text", help="the field of a row that holds its text")
    p.add_argument("--hf_split", default="train")
    p.add_argument("--hf_max_docs", type=int, default=100_000, help="with --shard_tokens, streamed: set it high")
    p.add_argument("--tokenizer", default="bytes", help="bytes | gpt2 | cl100k_base ... | a checkpoint directory "
                   "holding tokenizer.json (optional package tokenizers) or tokenizer.model (sentencepiece)")
    p.add_argument("--out", required=True)
    p.add_argument("--val_fraction", type=float, default=0.1)
    p.add_argument("--shard_tokens", type=int, default=0,
                   help="stream into shards of this many tokens (web-scale corpora; 0: one train.bin / val.bin)")
    a = p.parse_args(argv)

    def work():
        docs = read_documents(a.input)
        if a.hf_dataset:
            try:
                import datasets  # optional: only for hub datasets
            except ImportError:
                raise ConfigError("--hf_dataset needs the optional package: pip install datasets") from None
            ds = datasets.load_dataset(a.hf_dataset, a.hf_config, split=a.hf_split, streaming=True)
            hub = hub_documents(ds, a.hf_text_field, a.hf_max_docs, a.hf_dataset)
            docs = itertools.chain(docs, hub) if a.shard_tokens else docs + list(hub)  # shards: streamed
        elif not docs:
            raise ConfigError("no documents: give --input files or --hf_dataset")
        print(json.dumps(prepare(a.out, docs, a.tokenizer, a.val_fraction, a.shard_tokens)))
    exit_on_user_error(work, ValueError, RuntimeError)


if __name__ == "__main__":
    main()
