"""
data.py: the chat template with its loss mask, and batching.

Everything that turns a conversation into tensors lives here, in the order the pipeline uses it:
  1. `render_chat` turns a conversation into (ids, loss_mask); the chat template lives only there.
  2. `truncate` and `collate` cut, shift and pad examples into a batch whose targets are IGNORE_INDEX
     wherever the loss must not look; `pad_rows` pads token rows for scoring.
The tokenizer is in tokenizer.py, the file loaders in formats.py.

  chat = [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]
  ids, loss_mask = render_chat(tok, chat)
  batch = collate([(ids, loss_mask)], pad_id=tok.pad_id, max_len=256)

Departure: `truncate` keeps the token just before the response (the `<|assistant|>` marker), so that
after the input/target shift the first answer token is still a target (see its docstring).
"""

import torch

from model import IGNORE_INDEX  # target value that torch.nn.functional.cross_entropy skips (its ignore_index)

ROLES = ("system", "user", "assistant")


# ----------------------------------------------------------------------------------------------
# 1. Chat template and loss mask
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


def encode_content(tokenizer, text: str) -> list[int]:
    """The ids of a message's text inside the chat template: plain text with a leading space."""
    return tokenizer.encode(" " + text)


def decode_content(tokenizer, ids) -> str:
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


def render_chat(tokenizer, messages: list[dict],
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


def render_prompt(tokenizer, messages: list[dict], max_len: int | None = None) -> list[int]:
    """Render `messages` and open an assistant turn: the input for generation.

    With max_len, only the last max_len tokens are kept: a prompt longer than max_len loses its start."""
    ids, _ = render_chat(tokenizer, messages)
    ids = ids + [tokenizer.assistant_id]
    return ids[-max_len:] if max_len else ids


# ----------------------------------------------------------------------------------------------
# 2. Batching


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


def pad_rows(rows, pad_id, side="right"):
    """Token lists of different lengths -> (ids, attention_mask), each (B, T) LongTensors."""
    B, T = len(rows), max(len(row) for row in rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, row in enumerate(rows):
        cols = slice(0, len(row)) if side == "right" else slice(T - len(row), T)
        ids[b, cols], mask[b, cols] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask


def render_response(tokenizer, prompt, response, max_len=None):
    """Token ids of prompt + assistant response, ending with <|end|>: what a reward model reads.
    Longer than max_len: the prompt's start is cut, the response kept (truncate)."""
    ids, loss_mask = render_chat(tokenizer, prompt + [{"role": "assistant", "content": response}])
    return truncate(ids, loss_mask, max_len)[0] if max_len else ids
