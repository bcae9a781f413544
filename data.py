"""Data: a byte-level BPE tokenizer, the chat template with its loss mask, batching, and loaders.

Everything that turns text into tensors lives here, in the order the pipeline uses it:

1. `train_bpe` learns a byte-level BPE vocabulary in pure Python (Sennrich et al. 2016, made
   byte-level as in GPT-2); `Tokenizer` hands the result to a `tiktoken.Encoding`, which does the
   encoding itself in Rust. Files are plain text (`tokenizer.tiktoken` + `tokenizer.json`), never pickle.
2. `render_chat` turns a conversation into (ids, loss_mask); the chat template lives only there.
3. `truncate` and `collate` cut, shift and pad examples into a batch whose targets are IGNORE_INDEX
   wherever the loss must not look.
4. `load_*` read the usual instruction, preference and text formats; every problem raises `DataError`
   with `file:line: problem`.

Usage:
    tok = Tokenizer.train(load_text("corpus.txt"), vocab_size=2048)
    tok.save("out/tokenizer")                     # Tokenizer.load("out/tokenizer") reads it back
    chat = [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]
    ids, loss_mask = render_chat(tok, chat)
    batch = collate([(ids, loss_mask)], pad_id=tok.pad_id, max_len=256)

Choices and deviations:
- Digits are split one per token and never carry a leading space (GPT-2 keeps " 2023" together),
  so that sums are learnable by a small model; LLaMA's tokenizer does the same.
- `Tokenizer.encode` never turns text like "<|end|>" into a special token: a user cannot forge
  the chat template. Special tokens are only ever added by `render_chat`.
- `Tokenizer.train(text, vocab_size)` counts the 6 special tokens in vocab_size (the model's
  embedding size); `train_bpe(text, vocab_size)` counts mergeable tokens only.
- `truncate` keeps the token just before the response (the `<|assistant|>` marker), so that after
  the input/target shift the first answer token is still a target (see its docstring).
"""

import base64
import heapq
import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import regex  # like `re`, plus \p{L} (any letter) and \p{N} (any number); tiktoken depends on it
import tiktoken
import torch
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

# GPT-2's split pattern, except `\p{N}` (one digit per chunk) instead of ` ?\p{N}+`.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = ["<|bos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|pad|>"]
ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # target value that torch.nn.functional.cross_entropy skips (its ignore_index)


class DataError(ValueError):
    """A problem in a data file. The message reads `file:line: problem`."""


# ----------------------------------------------------------------------------------------------
# 1. Byte-level BPE training


def _merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` by `new_id`, scanning left to right."""
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def train_bpe(text: str, vocab_size: int, verbose: bool = False) -> dict[bytes, int]:
    """Learn byte-level BPE merges on `text`.

    Returns tiktoken-style mergeable ranks {token bytes: id}: the 256 single bytes at ids 0..255,
    then one token per merge in merge order, `vocab_size` tokens in all (fewer if no pair of
    tokens occurs twice any more). Each step merges the most frequent adjacent pair; ties go to
    the smallest pair of ids, so training is deterministic.

    Instead of recounting all pairs after every merge (the textbook loop, quadratic), we keep the
    pair counts, an index pair -> chunks that contain it, and a heap of counts, and update them
    only for the chunks a merge touches. Same idea as subword-nmt's learn_bpe.py and the heap in
    Hugging Face tokenizers' BpeTrainer.
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (the single bytes), got {vocab_size}")
    # Merges never cross chunk boundaries, so we only need each distinct chunk and its count.
    chunk_counts = Counter(regex.findall(SPLIT_PATTERN, text))
    chunk_ids = [list(chunk.encode("utf-8")) for chunk in chunk_counts]  # token ids of each chunk
    freqs = list(chunk_counts.values())  # how often each chunk occurs in the text

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)  # weighted by chunk frequency
    pair_to_chunks: dict[tuple[int, int], set[int]] = defaultdict(set)  # may hold stale entries
    for c, ids in enumerate(chunk_ids):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] += freqs[c]
            pair_to_chunks[pair].add(c)
    # Max-heap via negated counts. A count that changes gets a new entry; the old one is stale and
    # is skipped when popped because it no longer matches pair_counts ("lazy deletion").
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    vocab = [bytes([b]) for b in range(256)]  # id -> token bytes
    token_to_id = {token: i for i, token in enumerate(vocab)}
    n_merges = 0
    while len(vocab) < vocab_size and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:
            continue  # stale heap entry
        if -neg_count < 2:
            break  # nothing left that occurs twice
        token = vocab[pair[0]] + vocab[pair[1]]
        # Rarely, the same bytes were already made from another pair ("ab"+"c" vs "a"+"bc"):
        # reuse that id, so every token has exactly one id.
        new_id = token_to_id.get(token, len(vocab))
        if new_id == len(vocab):
            vocab.append(token)
            token_to_id[token] = new_id

        # Re-count only the chunks that contain the pair: remove their old pairs, add their new ones.
        delta = Counter()  # pair -> change of its count
        for c in pair_to_chunks.pop(pair):
            old_ids = chunk_ids[c]
            new_ids = _merge_pair(old_ids, pair, new_id)
            if len(new_ids) == len(old_ids):
                continue  # stale index entry: an earlier merge already consumed the pair here
            for p in zip(old_ids, old_ids[1:]):
                delta[p] -= freqs[c]
            for p in zip(new_ids, new_ids[1:]):
                delta[p] += freqs[c]
                if new_id in p:  # pairs without the new token were indexed already
                    pair_to_chunks[p].add(c)
            chunk_ids[c] = new_ids
        for p, change in delta.items():
            if change == 0:
                continue
            pair_counts[p] += change
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                del pair_counts[p]

        n_merges += 1
        if verbose and (n_merges % 100 == 0 or len(vocab) == vocab_size):
            print(f"merge {n_merges} | vocab {len(vocab)}/{vocab_size} | "
                  f"{vocab[pair[0]]!r} + {vocab[pair[1]]!r} (count {-neg_count})")
    return {token: i for i, token in enumerate(vocab)}


# ----------------------------------------------------------------------------------------------
# 2. Tokenizer


class Tokenizer:
    """Byte-level BPE with the chat special tokens, backed by a `tiktoken.Encoding`.

    The special tokens get the ids right after the mergeable ranks, in SPECIAL_TOKENS order.
    `pad_id` differs from `end_id`: if they were equal, masking the pads would also mask the
    end-of-turn tokens and the model would never learn to stop (TRL issue #1623).
    """

    def __init__(self, mergeable_ranks: dict[bytes, int], pat_str: str = SPLIT_PATTERN,
                 name: str = "nanoinstruct", special_tokens: dict[str, int] | None = None,
                 kind: str = "trained"):
        if special_tokens is None:
            special_tokens = {tok: len(mergeable_ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
        missing = [tok for tok in SPECIAL_TOKENS if tok not in special_tokens]
        special_ids = set(special_tokens.values())
        collide = special_ids & set(mergeable_ranks.values())
        if missing or collide or len(special_ids) != len(special_tokens):
            raise ValueError(f"special tokens must include {SPECIAL_TOKENS} (missing {missing}) and "
                             "have ids distinct from each other and from the mergeable ranks")
        self.mergeable_ranks = mergeable_ranks
        self.pat_str, self.name, self.kind = pat_str, name, kind
        self.special_tokens = dict(special_tokens)
        self.enc = tiktoken.Encoding(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks,
                                     special_tokens=self.special_tokens)
        self.bos_id = special_tokens["<|bos|>"]
        self.system_id = special_tokens["<|system|>"]
        self.user_id = special_tokens["<|user|>"]
        self.assistant_id = special_tokens["<|assistant|>"]
        self.end_id = special_tokens["<|end|>"]
        self.pad_id = special_tokens["<|pad|>"]
        self.role_ids = {"system": self.system_id, "user": self.user_id, "assistant": self.assistant_id}
        self.vocab_size = self.enc.n_vocab

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, kind={self.kind!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids. "<|end|>" typed in the text is just bytes, never the special token."""
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        """Ids -> text. Pads are dropped; other special tokens appear as their names."""
        return self.enc.decode([int(i) for i in ids if int(i) != self.pad_id])

    def id_to_piece(self, token_id: int) -> str:
        """The text of one token (special tokens by name; a partial UTF-8 byte shows as \\xNN)."""
        return self.enc.decode_single_token_bytes(token_id).decode("utf-8", errors="backslashreplace")

    @classmethod
    def train(cls, text: str, vocab_size: int, verbose: bool = False) -> "Tokenizer":
        """Train BPE on `text`. `vocab_size` counts the special tokens too, so it is the model's."""
        return cls(train_bpe(text, vocab_size - len(SPECIAL_TOKENS), verbose=verbose))

    def save(self, directory) -> None:
        """Write tokenizer.tiktoken (`base64(token bytes) id` per line) and tokenizer.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lines = [f"{base64.b64encode(token).decode('ascii')} {rank}\n"
                 for token, rank in sorted(self.mergeable_ranks.items(), key=lambda item: item[1])]
        (directory / "tokenizer.tiktoken").write_text("".join(lines), encoding="ascii")
        meta = {"name": self.name, "kind": self.kind, "pat_str": self.pat_str,
                "special_tokens": self.special_tokens}
        (directory / "tokenizer.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory) -> "Tokenizer":
        """Read a tokenizer written by `save`."""
        directory = Path(directory)
        for path in (directory / "tokenizer.tiktoken", directory / "tokenizer.json"):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: run pretrain.py (it trains and saves the "
                                        "tokenizer) or Tokenizer.train(...).save(directory) first")
        ranks = {}
        ranks_path = directory / "tokenizer.tiktoken"
        for line_no, line in enumerate(_read_utf8(ranks_path).split("\n"), start=1):
            if not line.strip():
                continue
            try:
                token_b64, rank = line.split()
                ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
            except ValueError:  # wrong number of fields, bad base64 (binascii.Error) or bad int
                raise DataError(f"{ranks_path}:{line_no}: expected `base64_token rank`, "
                                f"got {line!r}") from None
        meta = json.loads(_read_utf8(directory / "tokenizer.json"))
        return cls(ranks, pat_str=meta["pat_str"], name=meta["name"],
                   special_tokens=meta["special_tokens"], kind=meta.get("kind", "trained"))

    @classmethod
    def from_gpt2(cls, directory) -> "Tokenizer":
        """GPT-2's own BPE from local files, for users who bring GPT-2 weights. Never downloads.

        `directory` holds vocab.bpe + encoder.json (OpenAI's files) or merges.txt + vocab.json
        (the same content, from the `gpt2` model repository on the Hugging Face hub). Ids 0..50256
        are GPT-2's, so its embeddings line up; <|endoftext|> keeps id 50256 but the chat template
        does not use it: our six special tokens follow it (ids 50257..50262), <|bos|> included.
        """
        directory = Path(directory)
        for merges_name, vocab_name in (("vocab.bpe", "encoder.json"), ("merges.txt", "vocab.json")):
            merges_path, vocab_path = directory / merges_name, directory / vocab_name
            if merges_path.is_file() and vocab_path.is_file():
                break
        else:
            raise FileNotFoundError(
                f"GPT-2 tokenizer files not found in {directory}: expected merges.txt + vocab.json "
                "(from the 'gpt2' model repository on the Hugging Face hub, "
                "https://huggingface.co/gpt2) "
                "or OpenAI's vocab.bpe + encoder.json. Download them on a machine with internet and "
                "copy them into that folder; nanoinstruct never downloads anything.")
        # tiktoken caches every file it reads in /tmp, keyed by path, and would serve a stale copy
        # if the file changed; an empty TIKTOKEN_CACHE_DIR turns the cache off.
        saved_cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""
        try:
            ranks = data_gym_to_mergeable_bpe_ranks(str(merges_path), str(vocab_path))
        except AssertionError:  # tiktoken asserts that both files describe the same vocabulary
            raise DataError(f"{merges_path} and {vocab_path} do not describe "
                            "the same vocabulary") from None
        finally:
            if saved_cache_dir is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved_cache_dir
        endoftext_id = len(ranks)  # 50256 for GPT-2
        special_tokens = {"<|endoftext|>": endoftext_id}
        special_tokens.update({tok: endoftext_id + 1 + i for i, tok in enumerate(SPECIAL_TOKENS)})
        return cls(ranks, GPT2_SPLIT_PATTERN, name="gpt2", special_tokens=special_tokens, kind="gpt2")


# ----------------------------------------------------------------------------------------------
# 3. Chat template and loss mask
#
# <|bos|> then, per message, <|role|> content <|end|>. For example:
#   <|bos|><|system|>Be brief.<|end|><|user|>Add 2 and 3.<|end|><|assistant|>5<|end|>
#   \_____________________________ loss_mask 0 _____________________________/\_ 1 __/
# A prompt for generation is the rendered messages + <|assistant|>; the model answers and ends
# its turn with <|end|>. Each message's content is encoded on its own (encode_content), so
# render_chat(chat + [answer]) == render_prompt(chat) + encode_content(answer) + [end_id] exactly.
#
# Every content is encoded with one leading space, as SentencePiece's add_dummy_prefix does
# (Kudo & Richardson 2018; LLaMA's tokenizer): " bus" is then the same token in the question
# "first word of bus, snake?" and at the start of the answer " bus", instead of a second token
# "bus" the model would have to learn to map to. A small model copies far more easily this way.
# decode_content removes that space again.


def encode_content(tokenizer: "Tokenizer", text: str) -> list[int]:
    """The ids of a message's text inside the chat template: plain text with a leading space."""
    return tokenizer.encode(" " + text)


def decode_content(tokenizer: "Tokenizer", ids) -> str:
    """Inverse of encode_content: decode and drop the one leading space."""
    text = tokenizer.decode(ids)
    return text[1:] if text.startswith(" ") else text


def _check_message(index: int, message) -> None:
    if not isinstance(message, dict):
        raise ValueError(f"message {index}: expected a dict with 'role' and 'content', got {message!r}")
    if message.get("role") not in ROLES:
        raise ValueError(f"message {index}: unknown role {message.get('role')!r}; "
                         f"expected one of {', '.join(ROLES)}")
    if not isinstance(message.get("content"), str):
        raise ValueError(f"message {index}: content must be a string, "
                         f"got {type(message.get('content')).__name__}")


def render_chat(tokenizer: Tokenizer, messages: list[dict],
                mask_prompt: bool = True) -> tuple[list[int], list[int]]:
    """Render a conversation to (ids, loss_mask), two lists of the same length.

    loss_mask is 1 on the content of assistant messages and on the <|end|> that closes each of
    them (the model must learn to stop), 0 elsewhere: <|bos|>, role markers, system and user text.
    With mask_prompt=False every token after <|bos|> is 1 (the "no masking" baseline).
    """
    ids, loss_mask = [tokenizer.bos_id], [0]
    for index, message in enumerate(messages):
        _check_message(index, message)
        content_ids = encode_content(tokenizer, message["content"])
        supervised = int(message["role"] == "assistant" or not mask_prompt)
        ids += [tokenizer.role_ids[message["role"]]] + content_ids + [tokenizer.end_id]
        loss_mask += [int(not mask_prompt)] + [supervised] * (len(content_ids) + 1)
    return ids, loss_mask


def render_prompt(tokenizer: Tokenizer, messages: list[dict]) -> list[int]:
    """Render `messages` and open an assistant turn: the input for generation."""
    ids, _ = render_chat(tokenizer, messages)
    return ids + [tokenizer.assistant_id]


# ----------------------------------------------------------------------------------------------
# 4. Batching


def truncate(ids: list[int], loss_mask: list[int], max_len: int) -> tuple[list[int], list[int], bool]:
    """Cut an example to at most `max_len` tokens: keep the response, cut the prompt's start.

    Rule: start = min(len - max_len, first_supervised - 1) and keep [start : start + max_len].
    Normally this keeps the last max_len tokens. When the response (plus the one token before
    it, the <|assistant|> marker) is longer than the window, it keeps the response's start and
    cuts its end. The token before the response is kept so that, after the shift in `collate`,
    the first answer token is still a target. No supervised token: keep the last max_len tokens.
    Returns (ids, loss_mask, was_cut).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    if len(ids) <= max_len:
        return list(ids), list(loss_mask), False
    start = len(ids) - max_len
    if 1 in loss_mask:
        start = min(start, max(list(loss_mask).index(1) - 1, 0))
    return list(ids[start:start + max_len]), list(loss_mask[start:start + max_len]), True


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int, max_len: int | None = None,
            pad_side: str = "right") -> dict:
    """Turn (ids, loss_mask) examples into a padded batch for next-token prediction.

    Each example is first truncated to max_len + 1 tokens (max_len inputs need max_len + 1
    tokens), then input_ids = ids[:-1] and targets = ids[1:]. The mask moves WITH the targets:
    targets[t] is IGNORE_INDEX when loss_mask[t + 1] == 0 (OpenRLHF #973 is this off-by-one).
    Returns {"input_ids": (B, T), "targets": (B, T), "attention_mask": (B, T) with 1 on real
    tokens, all LongTensors; "n_truncated": how many examples were cut}.
    """
    if pad_side not in ("left", "right"):
        raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
    if not examples:
        raise ValueError("collate needs at least one example")
    rows, n_truncated = [], 0
    for ids, loss_mask in examples:
        if len(ids) != len(loss_mask):
            raise ValueError(f"ids and loss_mask differ in length: {len(ids)} vs {len(loss_mask)}")
        if max_len is not None:
            ids, loss_mask, was_cut = truncate(ids, loss_mask, max_len + 1)
            n_truncated += was_cut
        if len(ids) < 2:
            raise ValueError("an example needs at least 2 tokens (one input and one target)")
        targets = [token if mask else IGNORE_INDEX for token, mask in zip(ids[1:], loss_mask[1:])]
        rows.append((list(ids[:-1]), targets))

    B, T = len(rows), max(len(inputs) for inputs, _ in rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)  # pads are never targets
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    for b, (row_inputs, row_targets) in enumerate(rows):
        n = len(row_inputs)
        cols = slice(0, n) if pad_side == "right" else slice(T - n, T)
        input_ids[b, cols] = torch.tensor(row_inputs)
        targets[b, cols] = torch.tensor(row_targets)
        attention_mask[b, cols] = 1
    return {"input_ids": input_ids, "targets": targets, "attention_mask": attention_mask,
            "n_truncated": n_truncated}


# ----------------------------------------------------------------------------------------------
# 5. Loaders. A conversation is a list of {"role", "content"} dicts. Every problem raises
# DataError("file:line: problem"), line numbers 1-based.


def _read_utf8(path) -> str:
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {raw[e.start]:#04x}); "
                        "save the file as UTF-8") from None


def _json_type(value) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_jsonl(path) -> list[tuple[int, dict]]:
    """(line number, record) for each non-blank line of a JSONL file."""
    records = []
    # split("\n"), not splitlines(): a JSON string may hold a raw U+2028, which splitlines splits on
    for line_no, line in enumerate(_read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line_no}: invalid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, got a {_json_type(record)}")
        records.append((line_no, record))
    if not records:
        raise DataError(f"{path}: empty file (no records)")
    return records


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _read_json_list(path) -> list[tuple[int, object]]:
    """(line where the item starts, item) for each item of a file holding one JSON list.

    json.load would lose the line numbers, so we walk the list: raw_decode parses one item from
    a position and says where it ended.
    """
    text, decoder = _read_utf8(path), json.JSONDecoder()
    pos = _JSON_SPACE.match(text, 0).end()
    if pos == len(text):
        raise DataError(f"{path}: empty file")
    if text[pos] != "[":
        raise DataError(f"{path}:{text.count(chr(10), 0, pos) + 1}: expected a JSON list of examples")
    pos = _JSON_SPACE.match(text, pos + 1).end()
    if text[pos:pos + 1] == "]":
        raise DataError(f"{path}: empty file (the list has no examples)")
    items, line, counted_to = [], 1, 0  # newlines before `counted_to` are counted in `line`
    while True:
        line, counted_to = line + text.count("\n", counted_to, pos), pos  # linear, not quadratic
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        items.append((line, item))
        pos = _JSON_SPACE.match(text, pos).end()
        if text[pos:pos + 1] == ",":
            pos = _JSON_SPACE.match(text, pos + 1).end()
        elif text[pos:pos + 1] == "]":
            break
        else:
            line_no = text.count("\n", 0, pos) + 1
            raise DataError(f"{path}:{line_no}: invalid JSON (expected ',' or ']' after an item)")
    if text[pos + 1:].strip():
        raise DataError(f"{path}: invalid JSON (text after the list's closing ']')")
    return items


def _field(record: dict, key: str, expected: type | tuple, where: str):
    """record[key], checked to exist and to have the expected type (str, list, or both)."""
    if key not in record:
        raise DataError(f'{where}: missing field "{key}"')
    value, types = record[key], expected if isinstance(expected, tuple) else (expected,)
    if not isinstance(value, types):
        wanted = " or ".join({str: "string", list: "list"}[t] for t in types)
        raise DataError(f'{where}: field "{key}" must be a {wanted}, got a {_json_type(value)}')
    return value


def _messages(value: list, where: str, key: str) -> list[dict]:
    """Check a message list and return clean {"role", "content"} copies."""
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(f"{where}: {key}[{i}] must be an object, got a {_json_type(message)}")
        role = _field(message, "role", str, f"{where}: {key}[{i}]")
        if role not in ROLES:
            raise DataError(f'{where}: {key}[{i}]: unknown role "{role}" (expected {", ".join(ROLES)})')
        content = _field(message, "content", str, f"{where}: {key}[{i}]")
        messages.append({"role": role, "content": content})
    return messages


def _check_response(text: str, where: str, key: str) -> None:
    if not text.strip():
        raise DataError(f'{where}: empty response in "{key}"')


def _split_answer(messages: list[dict], where: str, key: str) -> tuple[list[dict], str]:
    """(prompt messages, content of the final assistant message)."""
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError(f'{where}: "{key}" must end with an assistant message')
    return messages[:-1], messages[-1]["content"]


def load_alpaca(path) -> list[list[dict]]:
    """Alpaca JSON: a list of {"instruction", "input" (optional, may be empty), "output"}."""
    conversations = []
    for line_no, item in _read_json_list(path):
        where = f"{path}:{line_no}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected a JSON object, got a {_json_type(item)}")
        instruction = _field(item, "instruction", str, where)
        extra_input = item.get("input") or ""
        if not isinstance(extra_input, str):
            raise DataError(f'{where}: field "input" must be a string, got a {_json_type(extra_input)}')
        output = _field(item, "output", str, where)
        _check_response(output, where, "output")
        user = instruction + "\n\n" + extra_input if extra_input.strip() else instruction
        conversations.append([{"role": "user", "content": user},
                              {"role": "assistant", "content": output}])
    return conversations


def _chats(path, records) -> list[list[dict]]:
    conversations = []
    for line_no, record in records:
        where = f"{path}:{line_no}"
        messages = _messages(_field(record, "messages", list, where), where, "messages")
        if not any(message["role"] == "user" for message in messages):
            raise DataError(f'{where}: "messages" has no user message')
        _check_response(_split_answer(messages, where, "messages")[1], where, "messages")
        conversations.append(messages)
    return conversations


def _prompt_completions(path, records) -> list[list[dict]]:
    conversations = []
    for line_no, record in records:
        where = f"{path}:{line_no}"
        prompt = _field(record, "prompt", str, where)
        completion = _field(record, "completion", str, where)
        _check_response(completion, where, "completion")
        conversations.append([{"role": "user", "content": prompt},
                              {"role": "assistant", "content": completion}])
    return conversations


def load_chat_jsonl(path) -> list[list[dict]]:
    """Chat JSONL: {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}."""
    return _chats(path, _read_jsonl(path))


def load_prompt_completion_jsonl(path) -> list[list[dict]]:
    """Prompt/completion JSONL: {"prompt": str, "completion": str} -> [user, assistant]."""
    return _prompt_completions(path, _read_jsonl(path))


def load_sft_file(path) -> list[list[dict]]:
    """Any SFT file: .json is Alpaca; for .jsonl the first record's fields tell the format."""
    if Path(path).suffix == ".json":
        return load_alpaca(path)
    if Path(path).suffix != ".jsonl":
        raise DataError(f"{path}: unknown file type; expected .json (Alpaca) "
                        "or .jsonl (chat or prompt/completion)")
    records = _read_jsonl(path)
    line_no, first = records[0]
    if "messages" in first:
        return _chats(path, records)
    if "prompt" in first and "completion" in first:
        return _prompt_completions(path, records)
    raise DataError(f'{path}:{line_no}: unknown format: expected a "messages" field (chat) '
                    f'or "prompt" and "completion" fields, got {sorted(first)}')


def _parse_hh(transcript: str, where: str, key: str) -> list[dict]:
    """Anthropic HH-RLHF transcript "\\n\\nHuman: ...\\n\\nAssistant: ..." -> messages."""
    parts = re.split(r"\n\n(Human|Assistant): ?", transcript)  # [before, role, text, role, text, ...]
    if parts[0].strip() or len(parts) < 3:
        raise DataError(f'{where}: "{key}" is not a "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript')
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[role], "content": text} for role, text in zip(parts[1::2], parts[2::2])]


def _preference(record: dict, where: str) -> dict:
    if "prompt" in record:  # explicit prompt; chosen/rejected are strings or message lists
        prompt = _field(record, "prompt", (str, list), where)
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        else:
            prompt = _messages(prompt, where, "prompt")
        answers = []
        for key in ("chosen", "rejected"):
            answer = _field(record, key, (str, list), where)
            if isinstance(answer, list):  # may repeat the prompt; only the final answer counts
                answer = _split_answer(_messages(answer, where, key), where, key)[1]
            answers.append(answer)
    else:  # implicit prompt: the shared prefix of two message lists or two HH transcripts
        splits = []
        for key in ("chosen", "rejected"):
            value = _field(record, key, (str, list), where)
            if isinstance(value, str):
                messages = _parse_hh(value, where, key)
            else:
                messages = _messages(value, where, key)
            splits.append(_split_answer(messages, where, key))
        (prompt, chosen), (rejected_prompt, rejected) = splits
        if prompt != rejected_prompt:
            raise DataError(f'{where}: "chosen" and "rejected" have different prompts '
                            "(all messages before the final assistant answer must be the same)")
        answers = [chosen, rejected]
    if not prompt or prompt[-1]["role"] != "user":
        raise DataError(f'{where}: the prompt must end with a user message')
    for key, answer in zip(("chosen", "rejected"), answers):
        _check_response(answer, where, key)
    return {"prompt": prompt, "chosen": answers[0], "rejected": answers[1]}


def load_preferences_jsonl(path) -> list[dict]:
    """Preference JSONL -> [{"prompt": messages, "chosen": str, "rejected": str}, ...].

    Accepted per line: {"prompt", "chosen", "rejected"} with a string or message-list prompt and
    string or message-list answers; or {"chosen", "rejected"} alone, as message lists or as
    HH-RLHF transcripts, whose prompt is everything before the final assistant answer.
    """
    return [_preference(record, f"{path}:{line_no}") for line_no, record in _read_jsonl(path)]


def write_jsonl(path, records: list[dict]) -> None:
    """One JSON object per line, UTF-8, non-ASCII kept readable."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_preferences_jsonl(path, prefs: list[dict]) -> None:
    """Write {"prompt": messages, "chosen": str, "rejected": str} lines (load_preferences_jsonl's form)."""
    records = []
    for pref in prefs:
        prompt = pref["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        records.append({"prompt": prompt, "chosen": pref["chosen"], "rejected": pref["rejected"]})
    write_jsonl(path, records)


def load_text(paths) -> str:
    """Read plain UTF-8 text files (a directory: its *.txt files, sorted), joined by a blank line."""
    files = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(path.glob("*.txt"))
            if not found:
                raise DataError(f"{path}: no .txt files in this directory")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return "\n\n".join(_read_utf8(file) for file in files)
