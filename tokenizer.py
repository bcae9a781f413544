"""
tokenizer.py: a byte-level BPE tokenizer with the chat special tokens.

`train_bpe` learns a byte-level BPE vocabulary in pure Python (Sennrich et al. 2016, made byte-level
as in GPT-2); `Tokenizer` hands the result to a `tiktoken.Encoding`, which does the encoding itself in
Rust. Files are plain text (`tokenizer.tiktoken` + `tokenizer.json`), never pickle.

  tok = Tokenizer.train(load_text("corpus.txt"), vocab_size=2048)
  tok.save("out/tokenizer")                     # Tokenizer.load("out/tokenizer") reads it back
  tok = Tokenizer.from_gpt2("path/to/gpt2/")    # GPT-2's own BPE, plus our chat tokens

Departures from GPT-2's tokenizer:
  1. Digits are split one per token and never carry a leading space (GPT-2 keeps " 2023" together),
     so that sums are learnable by a small model; LLaMA's tokenizer does the same.
  2. `Tokenizer.encode` never turns text like "<|end|>" into a special token: a user cannot forge
     the chat template. Special tokens are only ever added by data.render_chat.
  3. `Tokenizer.train(text, vocab_size)` counts the 6 special tokens in vocab_size (the model's
     embedding size); `train_bpe(text, vocab_size)` counts mergeable tokens only.
"""

import base64
import heapq
import json
import os
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import regex  # like `re`, plus \p{L} (any letter) and \p{N} (any number); tiktoken depends on it
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from formats import DataError, read_utf8

# GPT-2's split pattern, except `\p{N}` (one digit per chunk) instead of ` ?\p{N}+`.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = ["<|bos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|pad|>"]


# ----------------------------------------------------------------------------------------------
# Byte-level BPE training


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
# The tokenizer


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
        ranks, seen_ranks = {}, set()
        ranks_path = directory / "tokenizer.tiktoken"
        for line_no, line in enumerate(read_utf8(ranks_path).split("\n"), start=1):
            if not line.strip():
                continue
            try:
                token_b64, rank = line.split()
                token, rank = base64.b64decode(token_b64, validate=True), int(rank)
            except ValueError:  # wrong number of fields, bad base64 (binascii.Error) or bad int
                raise DataError(f"{ranks_path}:{line_no}: expected `base64_token rank`, "
                                f"got {line!r}") from None
            if token in ranks or rank in seen_ranks:  # tiktoken would panic (an exception `except` misses)
                raise DataError(f"{ranks_path}:{line_no}: token or rank {rank} given twice")
            ranks[token] = rank
            seen_ranks.add(rank)
        meta_path = directory / "tokenizer.json"
        try:
            meta = json.loads(read_utf8(meta_path))
            fields = (meta["pat_str"], meta["name"], meta["special_tokens"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{meta_path}: not a tokenizer file written by Tokenizer.save "
                            f"({type(e).__name__}: {e}); train the tokenizer again") from None
        return cls(ranks, pat_str=fields[0], name=fields[1], special_tokens=fields[2], kind=meta.get("kind", "trained"))

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
            merges_text = read_utf8(merges_path)
            if not merges_text.endswith("\n"):  # tiktoken drops the last line, thinking it is the empty one
                with tempfile.TemporaryDirectory() as tmp:
                    complete = Path(tmp) / merges_path.name
                    complete.write_text(merges_text + "\n", encoding="utf-8")
                    ranks = data_gym_to_mergeable_bpe_ranks(str(complete), str(vocab_path))
            else:
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
