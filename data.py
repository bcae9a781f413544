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


def _turn(tokenizer, message: dict, mask_prompt: bool = True) -> tuple[list[int], list[int]]:
    """One message in the template, <|role|> content <|end|>, and its loss mask."""
    content_ids = encode_content(tokenizer, message["content"])
    supervised = int(message["role"] == "assistant" or not mask_prompt)
    return ([tokenizer.role_ids[message["role"]]] + content_ids + [tokenizer.end_id],
            [int(not mask_prompt)] + [supervised] * (len(content_ids) + 1))


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
        turn_ids, turn_mask = _turn(tokenizer, message, mask_prompt)
        ids, loss_mask = ids + turn_ids, loss_mask + turn_mask
    return ids, loss_mask


# The truncation rule, one for every stage (SFT, the reward model, DPO, and prompts for generation).
# A row is a context (the conversation so far) followed by a final turn: the assistant answer that
# is trained on or scored, or the open <|assistant|> marker of a prompt. When a row is longer than
# max_len tokens:
#   1. the final turn is kept whole when it fits with at least a quarter of the window of context
#      (all of the context when that is shorter);
#   2. the context loses its oldest turns first, whole turns, but never the last one (the question);
#   3. the system message goes next: it is kept as long as the question and the answer fit with it;
#   4. then the question loses its start, token by token; <|bos|> is always kept;
#   5. a longer answer loses its end, and the context keeps that quarter: a question is never dropped
#      whole for its answer.
# Several answers to one prompt (a preference pair, a reward model's K answers) share ONE cut
# context, sized by the longest answer, as the DPO reference code and TRL do: chosen and rejected are
# then always judged after the same prompt. Every assistant turn that survives keeps its loss mask,
# so multi-turn SFT trains on each of them.


def _cut_context(tokenizer, messages: list[dict], budget: int, mask_prompt: bool) -> tuple[list[int], list[int]]:
    """<|bos|> and the turns of `messages` in at most `budget` (>= 1) tokens, by steps 2-4 of the rule."""
    turns = [_turn(tokenizer, message, mask_prompt) for message in messages]
    system = turns[:1] if messages and messages[0]["role"] == "system" else []
    rest = turns[len(system):]

    def size(kept):
        return 1 + sum(len(ids) for ids, _ in kept)

    while len(rest) > 1 and size(system + rest) > budget:
        rest = rest[1:]  # 2. the oldest turn, whole
    if size(system + rest) > budget:
        system = []  # 3. the system message
    ids = [token for turn_ids, _ in system + rest for token in turn_ids]
    mask = [m for _, turn_mask in system + rest for m in turn_mask]
    cut = max(len(ids) - (budget - 1), 0)  # 4. the question's start, token by token, after <|bos|>
    return [tokenizer.bos_id] + ids[cut:], [0] + mask[cut:]


def fit_rows(tokenizer, context: list[dict], finals: list[tuple[list[int], list[int]]], max_len: int,
             mask_prompt: bool = True) -> tuple[list[tuple[list[int], list[int]]], bool, int]:
    """One context and each final turn (ids, loss_mask) -> rows of at most max_len tokens, by the rule above.

    Returns (rows [(ids, loss_mask)], cut: whether any token was dropped, lost: how many supervised
    tokens (loss_mask 1) the rows lost, earlier answers included).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    for index, message in enumerate(context):
        _check_message(index, message)
    full_ids, full_mask = render_chat(tokenizer, context, mask_prompt)
    longest = max(len(ids) for ids, _ in finals)
    if len(full_ids) + longest <= max_len:
        return [(full_ids + ids, full_mask + mask) for ids, mask in finals], False, 0
    budget = max(max_len - longest, min(len(full_ids), max_len // 4), 1)  # 1 and 5: a quarter for the context
    ctx_ids, ctx_mask = _cut_context(tokenizer, context, budget, mask_prompt)
    room = max_len - len(ctx_ids)
    rows = [(ctx_ids + ids[:room], ctx_mask + mask[:room]) for ids, mask in finals]
    lost = sum(sum(full_mask) + sum(mask) for _, mask in finals) - sum(sum(mask) for _, mask in rows)
    return rows, True, lost


def fit_chat(tokenizer, messages: list[dict], max_len: int,
             mask_prompt: bool = True) -> tuple[list[int], list[int], bool, int]:
    """render_chat cut to at most max_len tokens by the truncation rule: the last message is the final
    turn when it is the assistant's. Returns (ids, loss_mask, cut, lost supervised tokens)."""
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        _check_message(len(messages) - 1, messages[-1])
        context, final = messages[:-1], _turn(tokenizer, messages[-1], mask_prompt)
    else:  # no answer at the end: the rule with an empty final turn
        context, final = messages, ([], [])
    [(ids, loss_mask)], cut, lost = fit_rows(tokenizer, context, [final], max_len, mask_prompt)
    return ids, loss_mask, cut, lost


def cut_summary(fitted, max_len: int) -> str:
    """Words for a stage's log from fit_chat / fit_rows results (tuples ending in cut, lost)."""
    cut = [item[-2:] for item in fitted if item[-2]]
    lost = [n for _, n in cut if n]
    if not cut:
        return f"none longer than {max_len} tokens"
    return (f"{len(cut)} longer than {max_len} tokens were cut by the truncation rule (data.py); "
            f"{len(lost)} of them lost {sum(lost)} supervised tokens (earlier answers or the end of the last)")


def render_responses(tokenizer, prompt: list[dict], responses: list[str], max_len: int | None = None,
                     ) -> tuple[list[tuple[list[int], list[int]]], bool, int]:
    """Rows prompt + each response + <|end|> with its loss mask, sharing one cut prompt when longer than
    max_len (the truncation rule): what DPO trains on and a reward model reads.
    Returns (rows [(ids, loss_mask)], cut, lost supervised tokens)."""
    finals = [_turn(tokenizer, {"role": "assistant", "content": text}) for text in responses]
    if max_len is None:
        full_ids, full_mask = render_chat(tokenizer, prompt)
        return [(full_ids + ids, full_mask + mask) for ids, mask in finals], False, 0
    return fit_rows(tokenizer, prompt, finals, max_len)


def render_prompt(tokenizer, messages: list[dict], max_len: int | None = None) -> list[int]:
    """Render `messages` and open an assistant turn: the input for generation.

    With max_len, a longer prompt is cut by the truncation rule (its oldest turns first)."""
    if max_len is None:
        return render_chat(tokenizer, messages)[0] + [tokenizer.assistant_id]
    return fit_rows(tokenizer, messages, [([tokenizer.assistant_id], [0])], max_len)[0][0][0]


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


def length_batches(lengths, batch_size):
    """Indices 0..N-1 in batches of batch_size, shortest rows first: a batch of rows of similar lengths
    pads little. The callers (evaluation, sampling, scoring) put each result back at its own index.
    The report's 800 prompts in batches of 256: padded to 2.1 times their total length in the given order, 1.2 sorted."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def render_response(tokenizer, prompt, response, max_len=None):
    """Token ids of prompt + assistant response, ending with <|end|>: what a reward model reads.
    Longer than max_len: cut by the truncation rule (render_responses with one response)."""
    return render_responses(tokenizer, prompt, [response], max_len)[0][0][0]
