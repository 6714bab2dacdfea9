"""
Tokenizers: ours, tiktoken's, and a released checkpoint's own, behind one interface (that of a tiktoken Encoding:
encode_ordinary, encode_ordinary_batch, decode, eot_token, n_vocab), and the chat formats SFT and DPO rows are
written in.

- `get_encoding("bytes")`: the 256 bytes plus a few special tokens, a real `tiktoken.Encoding` that needs no
  download (so `python train.py` works offline); `gpt2` / `cl100k_base`: tiktoken's BPEs (downloaded once by
  tiktoken, or read from TIKTOKEN_CACHE_DIR).
- `get_encoding(DIR)`: the tokenizer of a checkpoint directory (a released MiniCPM, or any HF-style directory),
  tokenizer.json through the optional `tokenizers` package, else tokenizer.model through the optional
  `sentencepiece`; its end-of-text token and whether it starts a text with <s> come from the tokenizer itself
  (tokenizer_config.json, or what it adds when asked for its special tokens). Its `id` (a hash of the tokenizer
  file: an exported copy has the same) is what data prepared with it records, so that data and model are never
  paired under two tokenizers.
- Chat rows ([(role, text)]) become token ids and labels (-100 on what is not trained: prompts, the template's
  markers) under the tokenizer's own format: the chat template of a directory's tokenizer_config.json when it has
  one (rendered in a sandbox: a template runs no code), else the released MiniCPM SFT format
  `<s><用户>{prompt}<AI>{response}</s>`; our own tokenizers use the plain `User: ... Assistant: ...` template.
"""

import functools
import hashlib
import json
import os
import shutil
import sys

import tiktoken

from files import make_dirs, one_line, read_json, replace_atomically, write_json

SPECIAL_TOKENS = ("<|endoftext|>", "<|user|>", "<|assistant|>")
# GPT-2's pre-tokenization regex; with byte-level ranks it only decides where BPE could merge, so any split works
_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# the files of a directory's tokenizer, in the order they are looked for, and those copied with it on export
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


class TokenizerUnavailable(FileNotFoundError, RuntimeError):
    """A tiktoken BPE that is neither cached nor downloadable: a missing file to every entry point (one line)."""


def known_tokenizers():
    """The tokenizer names get_encoding builds without a directory: our byte level one and tiktoken's BPEs."""
    return ["bytes", *tiktoken.list_encoding_names()]


def tokenizer_file(path):
    """The tokenizer file of a directory (tokenizer.json or tokenizer.model), or None."""
    return next((os.path.join(path, f) for f in TOKENIZER_FILES if os.path.isfile(os.path.join(path, f))), None)


@functools.lru_cache(maxsize=None)
def get_encoding(name="bytes"):
    """A tokenizer by name ("bytes", a tiktoken BPE) or by directory (DirTokenizer). Built once per name: batch
    builders (longctx.mixed_batch) ask for it every step."""
    if name == "bytes":
        return tiktoken.Encoding(name="bytes", pat_str=_PAT, mergeable_ranks={bytes([i]): i for i in range(256)},
                                 special_tokens={t: 256 + i for i, t in enumerate(SPECIAL_TOKENS)})
    if name not in known_tokenizers():
        if os.path.isdir(name):
            return DirTokenizer(name)
        raise ValueError(f"unknown tokenizer {name!r}: use one of {', '.join(known_tokenizers())}, or a directory "
                         f"holding tokenizer.json / tokenizer.model (a released checkpoint)")
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # no network and nothing cached: tiktoken raises a requests/urllib error
        raise TokenizerUnavailable(f"tiktoken BPE {name!r} is not cached and could not be downloaded "
                                   f"({type(e).__name__}): go online once, or point TIKTOKEN_CACHE_DIR at a cache "
                                   f"holding it, or use tokenizer='bytes'") from None


def tokenizer_id(name):
    """What identifies a tokenizer's token ids: its name, or for a directory its DirTokenizer.id."""
    return get_encoding(name).id if name not in known_tokenizers() else name


def data_tokenizer_id(meta):
    """The tokenizer id a prepared directory's meta.json records (data prepared before ids: its tokenizer name)."""
    return meta.get("tokenizer_id", meta["tokenizer"])


def _special(value):
    """A tokenizer_config.json special token: a string, or an AddedToken dict {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


class DirTokenizer:
    """The tokenizer of a checkpoint directory with a tiktoken Encoding's interface. encode_ordinary encodes text
    without adding special tokens (markers such as <用户> written in the text are still its own tokens);
    `bos_token` is the id the tokenizer starts a text with (None if it adds none), `eot_token` its end of text."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        file = tokenizer_file(path)
        if file is None:
            raise FileNotFoundError(f"{path} holds no tokenizer.json or tokenizer.model: give the checkpoint "
                                    f"directory its tokenizer files, or use a tokenizer name "
                                    f"({', '.join(known_tokenizers())})")
        with open(file, "rb") as f:
            self.id = f"{os.path.basename(file)}@{hashlib.sha256(f.read()).hexdigest()[:12]}"  # (a copy: the same)
        self.name = self.path
        config = self._read_config()
        self.chat_template = config.get("chat_template")
        if isinstance(self.chat_template, list):  # named templates: the default one
            self.chat_template = next((t["template"] for t in self.chat_template if t.get("name") == "default"), None)
        if file.endswith(".json"):
            self._open_tokenizers(file, config)
        else:
            self._open_sentencepiece(file, config)
        if self.eot_token is None:
            raise ValueError(f"{file}: no end-of-text token (no eos_token in tokenizer_config.json, and none of </s>, "
                             f"<|endoftext|>): add \"eos_token\" to {path}/tokenizer_config.json")
        self.eos_text = self.decode_token(self.eot_token)
        self.bos_text = self.decode_token(self.bos_token) if self.bos_token is not None else ""

    def _read_config(self):
        file = os.path.join(self.path, "tokenizer_config.json")
        if not os.path.isfile(file):
            return {}
        config = read_json(file, dict, "re-download the checkpoint")
        for key in ("chat_template", "eos_token", "bos_token"):  # what this file reads: a string (or its known forms)
            v = config.get(key)
            ok = v is None or isinstance(v, str) or (key == "chat_template" and isinstance(v, list) and all(
                isinstance(t, dict) and isinstance(t.get("template"), str) for t in v)) or \
                (key != "chat_template" and isinstance(v, dict) and isinstance(v.get("content"), str))
            if not ok:
                raise ValueError(f"{file}: {key} is a JSON {type(v).__name__} this tokenizer cannot use: fix it or "
                                 f"re-download the checkpoint")
        if not isinstance(config.get("add_bos_token"), (bool, type(None))):
            raise ValueError(f"{file}: add_bos_token must be true or false")
        return config

    def _open_tokenizers(self, file, config):
        try:
            from tokenizers import Tokenizer  # optional
        except ImportError:
            raise ImportError(f"{file} needs the optional package: pip install tokenizers") from None
        try:
            self.tok = Tokenizer.from_file(file)
        except Exception as e:  # (tokenizers raises its own Exception on a bad file)
            raise ValueError(f"{file} could not be read ({str(e).splitlines()[0]}): re-download the checkpoint's "
                             f"tokenizer") from None
        self.n_vocab = self.tok.get_vocab_size(with_added_tokens=True)
        names = [_special(config.get("eos_token")), "</s>", "<|endoftext|>"]
        self.eot_token = next((i for i in map(self.tok.token_to_id, filter(None, names)) if i is not None), None)
        plain, marked = self.tok.encode("a", add_special_tokens=False).ids, self.tok.encode("a").ids
        added = marked[0] if len(marked) > len(plain) and marked[1:1 + len(plain)] == plain else None
        bos = self.tok.token_to_id(_special(config.get("bos_token")) or "<s>")
        self.bos_token = {True: bos, False: None}.get(config.get("add_bos_token"), added)

    def _open_sentencepiece(self, file, config):
        try:
            import sentencepiece  # optional
        except ImportError:
            raise ImportError(f"{file} needs the optional package: pip install sentencepiece") from None
        try:
            self.tok = sentencepiece.SentencePieceProcessor(model_file=file)
        except Exception as e:  # (sentencepiece raises OSError / RuntimeError on a bad file)
            raise ValueError(f"{file} could not be read ({str(e).splitlines()[0]}): re-download the checkpoint's "
                             f"tokenizer") from None
        self.n_vocab = self.tok.get_piece_size()
        self.eot_token = self.tok.eos_id() if self.tok.eos_id() >= 0 else None
        self.bos_token = self.tok.bos_id() if self.tok.bos_id() >= 0 and config.get("add_bos_token", True) else None

    def encode_ordinary(self, text):
        if hasattr(self.tok, "token_to_id"):
            return self.tok.encode(text, add_special_tokens=False).ids
        return self.tok.encode(text)

    def encode_ordinary_batch(self, texts):
        if hasattr(self.tok, "token_to_id"):  # (tokenizers encodes a batch in parallel)
            return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]
        return self.tok.encode(list(texts))

    def decode(self, ids):
        return self.tok.decode(list(ids))

    def decode_token(self, i):
        return self.tok.id_to_token(i) if hasattr(self.tok, "id_to_token") else self.tok.id_to_piece(i)


def with_bos(enc, ids):
    """Ids as a text starts under enc (a document in pre-training, a sample's prompt): <s> first where the
    tokenizer starts texts with one (a released MiniCPM's does; ours do not)."""
    bos = getattr(enc, "bos_token", None)
    return ([bos] if bos is not None else []) + list(ids)


def decode_ids(enc, ids):
    """Text of token ids, the ids past the tokenizer (a model's vocabulary padding) dropped."""
    return enc.decode([i for i in ids if i < enc.n_vocab])


# ------------------------------------------------------------------------------------------------------------
# exported tokenizers


def byte_level_chars():
    """GPT-2's printable stand-in for each byte (the ByteLevel alphabet of HF tokenizers), by byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tokenizer_files(name):
    """(file name, content) of what one of our tokenizers needs beside exported weights: for "bytes" an exact HF
    tokenizer.json (BPE with no merges over the 256 byte tokens, our special tokens at 256...), which sample.py,
    transformers and vLLM read; for a tiktoken BPE, tiktoken.json naming the encoding (sample.py reads it)."""
    if name != "bytes":
        return "tiktoken.json", {"tiktoken_encoding": name}
    chars = byte_level_chars()
    specials = [dict(id=256 + i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False,
                     special=True) for i, t in enumerate(SPECIAL_TOKENS)]
    return "tokenizer.json", {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": specials, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {c: i for i, c in enumerate(chars)}, "merges": []}}


def save_tokenizer(name, out_dir):
    """Write a run's tokenizer into out_dir (beside exported weights), so that sample.py, transformers'
    AutoTokenizer and `tokenizers` read the directory: a directory's tokenizer files copied as they are, or
    tokenizer_files(name) (for "bytes" with a tokenizer_config.json naming its end-of-text token); returns the
    path of the tokenizer file."""
    make_dirs(out_dir)
    if name not in known_tokenizers():
        src = get_encoding(name).path
        for f in TOKENIZER_FILES + TOKENIZER_EXTRAS:
            if os.path.isfile(os.path.join(src, f)):
                copy_file(os.path.join(src, f), os.path.join(out_dir, f))
        return tokenizer_file(out_dir)
    file, spec = tokenizer_files(name)
    replace_atomically(os.path.join(out_dir, file), lambda f: json.dump(spec, f, ensure_ascii=False, indent=1), "w")
    if name == "bytes":
        write_json(os.path.join(out_dir, "tokenizer_config.json"),
                   {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": SPECIAL_TOKENS[0]})
    return os.path.join(out_dir, file)


def train_bpe(docs, vocab_size, out_dir):
    """A byte-level BPE of vocab_size tokens (our special tokens included) trained on docs with the optional
    `tokenizers` package, written to out_dir as tokenizer.json + tokenizer_config.json (get_encoding(out_dir) reads
    it); the same docs give the same file. Returns out_dir."""
    try:
        import tokenizers  # optional
    except ImportError:
        raise ImportError("a BPE tokenizer needs the optional package: pip install tokenizers") from None
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator(docs, tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    make_dirs(out_dir)
    replace_atomically(os.path.join(out_dir, "tokenizer.json"), lambda f: f.write(tok.to_str()), "w")
    write_json(os.path.join(out_dir, "tokenizer_config.json"),
               {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": SPECIAL_TOKENS[0], "add_bos_token": False})
    return out_dir


def copy_file(src, dst):
    """src copied to dst atomically (a full disk leaves no partial file: files.replace_atomically)."""
    replace_atomically(dst, lambda tmp: shutil.copyfile(src, tmp), mode=None, need=os.path.getsize(src))


def tokenizer_of(model_dir):
    """The tokenizer of an exported or released directory as get_encoding names it: "bytes" or a tiktoken BPE
    for our exports, the directory itself for its own tokenizer.json / tokenizer.model, None for none."""
    for name_file, read in (("tiktoken.json", lambda s: s.get("tiktoken_encoding")),
                            ("tokenizer.json", lambda s: "bytes" if s == tokenizer_files("bytes")[1] else None)):
        path = os.path.join(model_dir, name_file)
        if os.path.isfile(path):
            doc = read_json(path, None, "export the model again")
            name = read(doc) if isinstance(doc, dict) or name_file == "tokenizer.json" else None
            if name_file == "tiktoken.json" and not isinstance(name, str):
                raise ValueError(f"{path} must be an object naming the encoding, {{\"tiktoken_encoding\": \"gpt2\"}}: "
                                 f"export the model again")
            if name:
                return name
    return os.path.abspath(model_dir) if tokenizer_file(model_dir) else None


# ------------------------------------------------------------------------------------------------------------
# chat formats: a row's turns -> token ids and labels (-100: not trained)

# Our own template: plain text, so that it works with every tokenizer; the loss covers the response and the
# <|endoftext|> that ends it, never the prompt. Multi-turn: the turns concatenated, every assistant turn trained.
USER, ASSISTANT = "User: ", "\nAssistant:"
# the released MiniCPM SFT format (paper §6, the MiniCPM-2B chat models): <s><用户>{prompt}<AI>{response}</s>
MINICPM_USER, MINICPM_AI = "<用户>", "<AI>"


def chat_pieces(enc, turns):
    """[(token ids, trained, bytes)] of [(role, text), ...] under enc's chat format; `bytes` counts the text
    behind the trained ids (each special token one byte), for bits per byte over the responses."""
    if isinstance(enc, DirTokenizer):
        return template_pieces(enc, turns) if enc.chat_template else minicpm_pieces(enc, turns)
    pieces = []
    for role, text in turns:
        if role == "user":
            pieces.append((enc.encode_ordinary(USER + text + ASSISTANT), False, 0))
        else:
            response = " " + text
            pieces.append((enc.encode_ordinary(response) + [enc.eot_token], True, len(response.encode()) + 1))
    return pieces


def minicpm_pieces(enc, turns):
    pieces = [([enc.bos_token], False, 0)] if enc.bos_token is not None else []
    for role, text in turns:
        if role == "user":
            pieces.append((enc.encode_ordinary(MINICPM_USER + text + MINICPM_AI), False, 0))
        else:
            pieces.append((enc.encode_ordinary(text) + [enc.eot_token], True, len(text.encode()) + 1))
    return pieces


def template_pieces(enc, turns):
    """The pieces of a chat template (Jinja, as transformers renders it, in a sandbox): each turn is the text the
    template adds for it, found by rendering the conversation up to it; before an assistant turn, the generation
    prompt (untrained); the assistant's text is trained and ends with the end-of-text token (appended if the
    template does not write it). As transformers' apply_chat_template, nothing is added that the template does not
    write (a <s> included)."""
    render = chat_renderer(enc)
    messages, done, pieces = [], "", []

    def add(text, trained):
        ids = enc.encode_ordinary(text)
        if trained and not text.endswith(enc.eos_text):
            ids, text = ids + [enc.eot_token], text + enc.eos_text
        n = len(text.replace(enc.eos_text, " ").encode()) if trained else 0
        pieces.append((ids, trained, n))

    for role, text in turns:
        if role == "assistant":
            prompt = render(messages, True)
            add(_continued(done, prompt, enc), False)
            done = prompt
        messages.append({"role": role, "content": text})
        full = render(messages, False)
        add(_continued(done, full, enc), role == "assistant")
        done = full
    return pieces


def _continued(done, text, enc):
    if not text.startswith(done):
        raise ValueError(f"the chat template of {enc.path}/tokenizer_config.json does not render a conversation as "
                         f"the prefix of its continuation, so the prompt cannot be told from the response: give the "
                         f"directory a template that only appends (or remove chat_template to use the MiniCPM format)")
    return text[len(done):]


# a chat template renders a conversation in far less than these: one that loops or grows past them is refused
TEMPLATE_LINES = 2_000_000  # lines of the compiled template run per render (about a second)
TEMPLATE_CHARS = 1_000_000  # characters of any string it builds, and of its output


class TemplateLimit(Exception):
    pass


def bounded(render, where):
    """render() under TEMPLATE_LINES lines of the compiled template (a trace on its frames only) and TEMPLATE_CHARS
    characters of output: a template that nests loops or builds huge strings stops in one line, not hours later."""
    count = [0]

    def local(frame, event, arg):
        count[0] += 1
        if count[0] > TEMPLATE_LINES:
            raise TemplateLimit(f"{where} ran over {TEMPLATE_LINES:,} steps")
        return local

    def calls(frame, event, arg):
        return local if frame.f_code.co_filename == "<template>" else None
    before = sys.gettrace()
    sys.settrace(calls)
    try:
        out, n = [], 0
        for chunk in render():
            n += len(chunk)
            if n > TEMPLATE_CHARS:
                raise TemplateLimit(f"{where} wrote over {TEMPLATE_CHARS:,} characters")
            out.append(chunk)
        return "".join(out)
    finally:
        sys.settrace(before)


def chat_renderer(enc):
    """render(messages, add_generation_prompt) -> text, of enc's chat template in Jinja's immutable sandbox (the
    template can call no Python code) under bounds (bounded; strings past TEMPLATE_CHARS refused as they are made),
    with optional jinja2 (a dependency of transformers). A template that does not parse, fails, or breaks the
    sandbox's rules or the bounds is one ValueError line."""
    try:
        from jinja2 import TemplateError  # optional
        from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
    except ImportError:
        raise ImportError(f"{enc.path}/tokenizer_config.json has a chat template: pip install jinja2 to render it") \
            from None
    where = f"the chat template of {enc.path}"

    def raise_exception(message):
        raise ValueError(f"{where}: {message}")

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "+"])

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(right, int) and abs(right) > 64:
                raise TemplateLimit(f"{where} raises to the power {right}")
            if operator == "*" and isinstance(left, int) and isinstance(right, (str, list)):
                left, right = right, left
            if operator == "*" and isinstance(left, (str, list)) and isinstance(right, int) and \
                    len(left) * right > TEMPLATE_CHARS:
                raise TemplateLimit(f"{where} builds a string of over {TEMPLATE_CHARS:,} characters")
            return super().call_binop(context, operator, left, right)
    env = Bounded(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        template = env.from_string(enc.chat_template)
    except TemplateError as e:
        raise ValueError(f"{where} does not parse ({one_line(e)}): fix or remove chat_template") from None

    def render(messages, add_generation_prompt):
        try:
            return bounded(lambda: template.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                                     bos_token=enc.bos_text, eos_token=enc.eos_text), where)
        except TemplateLimit as e:
            raise ValueError(f"{e}: a chat template renders a conversation in far less; fix or remove chat_template") \
                from None
        except (TemplateError, SecurityError, TypeError, AttributeError, KeyError, IndexError, ZeroDivisionError,
                OverflowError, RecursionError, MemoryError) as e:
            raise ValueError(f"{where} fails on a conversation ({one_line(e)}): fix or remove chat_template") \
                from None
    return render


def chat_ids(enc, turns):
    """Token ids and labels (-100 where not trained) of [(role, text), ...] under enc's chat format."""
    return ids_and_labels(chat_pieces(enc, turns))


def ids_and_labels(pieces):
    """(token ids, labels) of chat_pieces: the labels are the ids where trained, -100 elsewhere."""
    ids, labels = [], []
    for part, trained, _ in pieces:
        ids += part
        labels += part if trained else [-100] * len(part)
    return ids, labels


def prompt_ids(enc, turns):
    """The ids a model is prompted with to answer the last (user) turn: the conversation under enc's chat format up
    to where the response starts (the generation prompt included)."""
    pieces = chat_pieces(enc, [*turns, ("assistant", "")])
    last = max(i for i, (_, trained, _) in enumerate(pieces) if trained)
    return [i for ids, _, _ in pieces[:last] for i in ids]
