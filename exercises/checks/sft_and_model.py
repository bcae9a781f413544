"""
exercises/checks/sft_and_model.py: the checks of the chat template, the SFT batch and loss, the causal
mask and the KV cache (exercises render_chat, masking, sft_loss, causal_mask, kv_cache_step).
"""

import math
from types import SimpleNamespace

import torch

from exercises.checks.harness import (ExerciseFailure, IGNORE_INDEX, call, check_gradient, close, diagnose, expect,
                                      fmt, num, pair, scalar, shape_of, tensor)


# ----------------------------------------------------------------------------- render_chat (data.render_chat)
class StandInTokenizer:
    """The checker's tokenizer: a character's id is its code point (" 2+3" -> [32, 50, 43, 51]), and the
    special tokens are the small ids below. It has everything data.render_chat reads."""
    bos_id, system_id, user_id, assistant_id, end_id, pad_id = 1, 2, 3, 4, 5, 0
    role_ids = {"system": 2, "user": 3, "assistant": 4}

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i >= 32)


def rendered(case, got):
    ids, mask = pair(case, got, "(ids, loss_mask)")
    try:
        ids, mask = [int(i) for i in ids], [int(m) for m in mask]
    except (TypeError, ValueError):
        raise ExerciseFailure(f"{case}: ids and loss_mask must be sequences of ints, got "
                              f"{type(ids).__name__} and {type(mask).__name__}") from None
    expect(len(ids) == len(mask), case + ": len(ids) == len(loss_mask)", (len(ids), len(mask)),
           "one mask entry per token", "every token gets a mask entry, the role markers and <|end|> too")
    return ids, mask


TEMPLATE = "<|bos|>, then per message: <|role|> content <|end|>, each content encoded with one leading space"
END_SUPERVISED = ("the <|end|> that closes an assistant message is supervised (1): the model must learn to "
                  "stop")
MARKER_MASKED = ("the <|assistant|> marker is prompt (0): generation starts after it, the model never "
                 "writes it")


def check_render_chat(render_chat):
    tok = StandInTokenizer()
    case = "render a user question and its answer"
    chat = [{"role": "user", "content": "2+3"}, {"role": "assistant", "content": "5"}]
    ids, mask = rendered(case, call(case, render_chat, tok, chat))
    # <|bos|>=1 <|user|>=3 " 2+3"=32 50 43 51 <|end|>=5 <|assistant|>=4 " 5"=32 53 <|end|>=5
    want = [1, 3, 32, 50, 43, 51, 5, 4, 32, 53, 5]
    hint = diagnose(ids, [(want[1:], "start with <|bos|>"),
                          ([1, 3, 50, 43, 51, 5, 4, 53, 5], "encode each content with one leading space: "
                           "data.encode_content(tokenizer, text) is tokenizer.encode(' ' + text)"),
                          ([1, 3, 32, 50, 43, 51, 4, 32, 53], "close every message with <|end|>"),
                          ([1, 32, 50, 43, 51, 5, 32, 53, 5], "open every message with its role marker, "
                           "tokenizer.role_ids[role]")], TEMPLATE)
    expect(ids == want, case + ": ids", ids, want, hint)
    want = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]  # the answer " 5" and its <|end|>
    hint = diagnose(mask, [([0] * 8 + [1, 1, 0], END_SUPERVISED), ([0] * 7 + [1] * 4, MARKER_MASKED),
                           ([0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1], "only assistant messages carry the loss: the "
                            "user's text and its <|end|> are 0"),
                           ([0] + [1] * 10, "mask_prompt=True (the default): everything but the assistant's "
                            "content and its <|end|> is 0")],
                    "1 on an assistant message's content and its <|end|>; 0 on <|bos|>, role markers and "
                    "system and user messages")
    expect(mask == want, case + ": loss_mask", mask, want, hint)

    case = "a system prompt and two exchanges"
    chat = [{"role": "system", "content": "ok"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}, {"role": "user", "content": "?"},
            {"role": "assistant", "content": "5"}]
    ids, mask = rendered(case, call(case, render_chat, tok, chat))
    # <|bos|> | <|system|> " ok" <|end|> | <|user|> " hi" <|end|> | <|assistant|> " yo" <|end|> |
    # <|user|> " ?" <|end|> | <|assistant|> " 5" <|end|>
    want = [1, 2, 32, 111, 107, 5, 3, 32, 104, 105, 5, 4, 32, 121, 111, 5, 3, 32, 63, 5, 4, 32, 53, 5]
    expect(ids == want, case + ": ids", ids, want, TEMPLATE)
    want = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1]
    hint = diagnose(mask, [([0] * 21 + [1] * 3, "EVERY assistant message is supervised, not only the last one"),
                           ([0] * 12 + [1] * 12, "a user message after an answer is prompt again: 0")],
                    "each assistant message: 1 on its content and <|end|>; everything else 0")
    expect(mask == want, case + ": loss_mask", mask, want, hint)

    case = "mask_prompt=False, the no-masking baseline"
    chat = [{"role": "user", "content": "2+3"}, {"role": "assistant", "content": "5"}]
    ids, mask = rendered(case, call(case, render_chat, tok, chat, mask_prompt=False))
    want = [0] + [1] * 10  # every token after <|bos|>, the role markers too
    hint = diagnose(mask, [([0] * 8 + [1] * 3, "mask_prompt=False: every token after <|bos|> is 1 "
                            "(you masked the prompt anyway)"),
                           ([1] * 11, "even then <|bos|> is 0: it is never predicted"),
                           ([0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1], "mask_prompt=False: the role markers are 1 too")],
                    "mask_prompt=False: 0 on <|bos|>, 1 on every other token")
    expect(mask == want, case + ": loss_mask", mask, want, hint)


# ----------------------------------------------------------------------------- masking (data.collate)
def check_masking(collate):
    case = "two examples, pad_id 0"
    # <|bos|>=1, two prompt tokens 2 3, answer tokens 4 5 (loss_mask 1); a second, shorter example
    examples = [([1, 2, 3, 4, 5], [0, 0, 0, 1, 1]), ([1, 6, 7], [0, 0, 1])]
    batch = call(case, collate, examples, pad_id=0)
    expect(isinstance(batch, dict) and {"input_ids", "targets", "attention_mask"} <= set(batch), case,
           type(batch).__name__ if not isinstance(batch, dict) else sorted(batch),
           "a dict with input_ids, targets, attention_mask")
    want = [[1, 2, 3, 4], [1, 6, 0, 0]]
    hint = diagnose(batch["input_ids"], [([[1, 2, 3, 4], [0, 0, 1, 6]], "pad on the right: pad_side='right' is "
                                          "the default")],
                    "inputs are ids[:-1]: the last token is never an input, only a target")
    expect(close(batch["input_ids"], want), case + ": input_ids, each row without its last token, "
           "right-padded with pad_id", fmt(batch["input_ids"]), want, hint)
    want = [[IGNORE_INDEX, IGNORE_INDEX, 4, 5], [IGNORE_INDEX, 7, IGNORE_INDEX, IGNORE_INDEX]]
    got = batch["targets"].tolist() if torch.is_tensor(batch["targets"]) else batch["targets"]
    shifted = ("the mask moves with the targets: targets[t] = ids[t+1] is supervised when loss_mask[t+1] is 1 "
               "(yours is a mask shifted by one)")
    hint = diagnose(got, [([[IGNORE_INDEX] * 3 + [5], [IGNORE_INDEX] * 4], shifted),  # used loss_mask[t]
                          ([[IGNORE_INDEX, 3, 4, IGNORE_INDEX], [6] + [IGNORE_INDEX] * 3], shifted),  # loss_mask[t + 2]
                          ([[IGNORE_INDEX, IGNORE_INDEX, 3, 4], [IGNORE_INDEX, 6, IGNORE_INDEX, IGNORE_INDEX]],
                           "the targets are the NEXT tokens: targets[t] = ids[t+1], not ids[t]"),
                          ([[IGNORE_INDEX, IGNORE_INDEX, 4, 5], [IGNORE_INDEX, 7, 0, 0]],
                           "a pad is never a target: IGNORE_INDEX, not pad_id")],
                    "targets[t] = ids[t+1] if loss_mask[t+1] else IGNORE_INDEX; pads get IGNORE_INDEX")
    expect(got == want, case + ": targets, ids[1:], and IGNORE_INDEX where the token being PREDICTED is not "
           "part of the answer", got, want, hint)
    want = [[1, 1, 1, 1], [1, 1, 0, 0]]
    hint = diagnose(batch["attention_mask"], [([[1, 1, 1, 1], [1, 1, 1, 1]], "pads get 0: the model must not "
                                               "attend to them"),
                                              ([[1, 1, 1, 1], [1, 1, 1, 0]], "the attention mask describes the "
                                               "INPUTS: a row of n tokens has n - 1 inputs")],
                    "1 on real input tokens, 0 on pads")
    expect(close(batch["attention_mask"], want), case + ": attention_mask, 1 on real input tokens, 0 on pads",
           fmt(batch["attention_mask"]), want, hint)

    case = "three examples, the longest in the middle, two answers in one row, pad_id 9"
    examples = [([1, 6, 7], [0, 0, 1]), ([1, 2, 8, 5, 3, 8, 5], [0, 0, 1, 1, 0, 1, 1]),
                ([1, 2, 3, 4, 5], [0, 0, 0, 1, 1])]
    batch = call(case, collate, examples, pad_id=9)
    for key in ("input_ids", "targets", "attention_mask"):
        got = batch.get(key) if isinstance(batch, dict) else None
        expect(torch.is_tensor(got) and got.dtype == torch.long, case + f": {key} is a LongTensor",
               getattr(got, "dtype", type(got).__name__), torch.long,
               "cross_entropy needs long targets and nn.Embedding long ids: torch.long")
        expect(tuple(got.shape) == (3, 6), case + f": {key} shape (B, T), T = the longest row's inputs",
               shape_of(got), (3, 6), "inputs are ids[:-1], so T is the longest example's length - 1 (here 7 - 1)"
               if tuple(got.shape) == (3, 7) else "pad every row to the longest, wherever it is in the batch")
    want = [[1, 6, 9, 9, 9, 9], [1, 2, 8, 5, 3, 8], [1, 2, 3, 4, 9, 9]]
    hint = diagnose(batch["input_ids"], [([[1, 6, 0, 0, 0, 0], [1, 2, 8, 5, 3, 8], [1, 2, 3, 4, 0, 0]],
                                          "pad with pad_id (here 9), not 0"),
                                         ([[9, 9, 9, 9, 1, 6], [1, 2, 8, 5, 3, 8], [9, 9, 1, 2, 3, 4]],
                                          "pad on the right: pad_side='right' is the default")],
                    "input_ids[b] = ids[:-1], then pad_id up to T")
    expect(close(batch["input_ids"], want), case + ": input_ids", fmt(batch["input_ids"]), want, hint)
    # row 1: ids[1:] = 2 8 5 3 8 5 with loss_mask[1:] = 0 1 1 0 1 1 (two answers "8 <|end|>")
    want = [[IGNORE_INDEX, 7] + [IGNORE_INDEX] * 4, [IGNORE_INDEX, 8, 5, IGNORE_INDEX, 8, 5],
            [IGNORE_INDEX, IGNORE_INDEX, 4, 5, IGNORE_INDEX, IGNORE_INDEX]]
    got = batch["targets"].tolist()
    hint = diagnose(got, [([[-100, 7, 9, 9, 9, 9], [-100, 8, 5, -100, 8, 5], [-100, -100, 4, 5, 9, 9]],
                           "a pad is never a target: IGNORE_INDEX, not pad_id")],
                    "targets[t] = ids[t+1] if loss_mask[t+1] else IGNORE_INDEX; pads get IGNORE_INDEX")
    expect(got == want, case + ": targets", got, want, hint)
    want = [[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    expect(close(batch["attention_mask"], want), case + ": attention_mask", fmt(batch["attention_mask"]), want,
           "1 on real input tokens, 0 on pads")


# ----------------------------------------------------------------------------- the SFT loss (model.lm_loss)
def sft_batch():
    """(logits (2, 3, 3), targets (2, 3)): two rows, 1 and 3 supervised targets, logits not normalised.

    Each supervised position's logits are log(w) + c for weights w, so softmax = w / sum(w) whatever
    the offset c: row 0, t=1: w = 1 2 1, target 1: p = 2/4. Row 1: t=0 w = 2 1 1, target 0: p = 2/4;
    t=1 w = 2 1 1, target 2: p = 1/4; t=2 w = 1 3 4, target 1: p = 3/8. The other positions hold junk.
    """
    log = lambda *w: torch.tensor(w).log()
    logits = torch.stack([torch.stack([log(1, 1, 2), log(1, 2, 1) + 3.0, torch.tensor([0.0, 5.0, -2.0])]),
                          torch.stack([log(2, 1, 1) - 2.0, log(2, 1, 1) + 7.0, log(1, 3, 4) + 1.0])])
    targets = torch.tensor([[IGNORE_INDEX, 1, IGNORE_INDEX], [0, 2, 1]])
    return logits, targets


def check_sft_loss(lm_loss):
    logits, targets = sft_batch()
    ce = [math.log(2), math.log(2), math.log(4), math.log(8 / 3)]  # -log p of the 4 supervised targets
    case = "two rows with 1 and 3 supervised targets, logits not normalised"
    got = scalar(case, call(case, lm_loss, logits, targets))
    want = sum(ce) / 4  # (0.6931 + 0.6931 + 1.3863 + 0.9808) / 4 = 0.9384: the mean over the batch's targets
    raw = -logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # -logit, no log_softmax
    ignored_as_0 = sum(ce) + math.log(4) + math.log(1 + math.exp(5) + math.exp(-2))  # -100 read as token 0
    hint = diagnose(got, [((ce[0] + sum(ce[1:]) / 3) / 2, "average over every supervised target of the batch, "
                           "not the mean of each row's mean (rows have different numbers of answer tokens)"),
                          (sum(ce) / 6, "skip targets equal to IGNORE_INDEX and divide by how many are left, "
                           "not by B * T"),
                          (sum(ce) / 2, "divide by the number of supervised targets, not by the number of rows"),
                          (ignored_as_0 / 6, "targets of IGNORE_INDEX carry no loss: you read them as token 0"),
                          (ignored_as_0 / 4, "targets of IGNORE_INDEX carry no loss: you read them as token 0"),
                          (num(raw[targets != IGNORE_INDEX].mean()), "logits are not log-probabilities: take "
                           "log_softmax (or F.cross_entropy) first")],
                    "loss = -log softmax(logits)[target], averaged over the targets that are not IGNORE_INDEX")
    expect(abs(got - want) < 1e-4, case + ": mean cross-entropy over the SUPERVISED targets", got, want, hint)

    case = 'reduction="sum"'
    got = scalar(case, call(case, lm_loss, logits, targets, reduction="sum"))
    expect(abs(got - sum(ce)) < 1e-4, case + ": the sum over supervised targets", got, sum(ce),
           'reduction="sum" returns the sum itself (gradient accumulation divides later)')

    case = "no supervised target at all"
    got = scalar(case, call(case, lm_loss, logits, torch.full((2, 3), IGNORE_INDEX)))
    expect(got == 0.0, case + ": the loss is 0 (not NaN)", got, 0.0, "0 / 0 is NaN: divide by max(count, 1)")

    case = "large logits: 1000 for the wrong token"
    big = torch.tensor([[[1000.0, 0.0, -1000.0], [1000.0, 0.0, -1000.0]]])
    got = scalar(case, call(case, lm_loss, big, torch.tensor([[1, 0]])))
    # log_softmax = logit - logsumexp = 0 - 1000 for token 1, 1000 - 1000 = 0 for token 0: mean (1000 + 0) / 2
    expect(abs(got - 500.0) < 1e-3, case + ": the loss stays finite", got, 500.0,
           "log(softmax(x)) underflows to log 0 = -inf: use F.log_softmax or F.cross_entropy, which subtract "
           "the max first" if not math.isfinite(got) else "-log softmax(logits)[target], per supervised target")

    import model
    check_gradient("the first case's gradient", lm_loss, model.lm_loss, {"logits": logits},
                   lambda f, logits: f(logits, targets))


# ----------------------------------------------------------------------------- the causal mask (model.causal_mask)
def check_causal_mask(causal_mask):
    def mask_of(case, attention, T):
        got = call(case, causal_mask, torch.tensor(attention), T)
        B, S = len(attention), len(attention[0])
        tensor(case, got, (B, 1, T, S), "(B, 1, T, S): the 1 is the heads' dimension, broadcast over every head"
               if torch.is_tensor(got) and tuple(got.shape) == (B, T, S) else "")
        expect(got.dtype == torch.bool, case + ": dtype", got.dtype, torch.bool,
               "scaled_dot_product_attention ADDS a float mask to the scores (0/1 would mask nothing); a bool "
               "mask says True = may attend")
        return got[:, 0].int().tolist()

    case = "no padding, T = S = 3"
    got = mask_of(case, [[1, 1, 1]], 3)
    want = [[[1, 0, 0], [1, 1, 0], [1, 1, 1]]]  # query t sees keys 0..t
    hint = diagnose(got, [([[[1, 1, 1], [0, 1, 1], [0, 0, 1]]], "causal: a query sees the keys at or BEFORE its "
                           "position, never after (yours is the transposed triangle)"),
                          ([[[0, 0, 0], [1, 0, 0], [1, 1, 0]]], "a query also sees its own key: s <= t, not s < t")],
                    "query t may attend to key s when s <= t")
    expect(got == want, case, got, want, hint)

    case = "left padding: row 0 has two pads, T = S = 4"
    got = mask_of(case, [[0, 0, 1, 1], [1, 1, 1, 1]], 4)
    # row 0: queries 0 and 1 are pads: they see only themselves; query 2 sees key 2; query 3 keys 2 and 3
    want = [[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]],
            [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]]
    no_diagonal = ("a pad query's row must not be all False: with nothing to attend to, softmax is 0/0 (NaN on "
                   "many PyTorch versions and kernels, and a NaN at a pad reaches real tokens in the next layer: "
                   "0 * NaN = NaN). Let every query attend to itself (the diagonal)")
    hint = diagnose(got, [([[[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]] * 2,
                           "keys that are pads (attention_mask 0) must be masked out: the real tokens of row 0 "
                           "may not look at its pads"),
                          ([[[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], want[1]], no_diagonal),
                          ([[[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], want[1]], "mask the KEYS that "
                           "are pads (the columns s), not the queries (the rows t)")],
                    "allowed = (s <= t) and key s is real, or s == t")
    expect(got == want, case, got, want, hint)

    case = "a cache step: the last T = 1 of S = 5 positions"
    got = mask_of(case, [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], 1)
    want = [[[0, 0, 1, 1, 1]], [[1, 1, 1, 1, 1]]]  # the one query sits at position 4
    at_the_start = "with a cache the T queries are the LAST T of the S positions: query t sits at S - T + t, not at t"
    hint = diagnose(got, [([[[0, 0, 0, 0, 0]], [[1, 0, 0, 0, 0]]], at_the_start),  # no diagonal either
                          ([[[1, 0, 0, 0, 0]], [[1, 0, 0, 0, 0]]], at_the_start)],
                    "query t sits at position S - T + t; it sees every real key up to there")
    expect(got == want, case, got, want, hint)

    case = "a chunk: the last T = 2 of S = 4 positions, one pad"
    got = mask_of(case, [[0, 1, 1, 1]], 2)
    want = [[[0, 1, 1, 0], [0, 1, 1, 1]]]  # queries at positions 2 and 3
    expect(got == want, case, got, want, "query t sits at position S - T + t = 2 + t")


# ----------------------------------------------------------------------------- one KV-cache step (generate.KVCache)
def check_kv_cache_step(KVCache):
    config = SimpleNamespace(n_layer=2, n_head=1, n_embd=2, block_size=16)  # head size 2
    case = "a new cache"
    cache = call(case, KVCache, config, 1, 4, "cpu")
    expect(getattr(cache, "length", None) == 0, case + ": cache.length", getattr(cache, "length", "missing"), 0,
           "keep self.length = 0 at the start: the model reads it (where the new positions go) and advances it")

    # the model's first pass: 2 prompt tokens, every layer stores its keys and values at positions 0 and 1
    k0, v0 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), torch.tensor([[[[5.0, 6.0], [7.0, 8.0]]]])  # (1, 1, 2, 2)
    k1, v1 = k0 + 10, v0 + 10  # layer 1's
    case = "the first pass: update(layer 0, two tokens)"
    k, v = pair(case, call(case, cache.update, 0, k0, v0, _name="KVCache.update"), "(keys, values)")
    full = ("return only the filled positions [:length + T]: the zeros after them are not keys, and the query "
            "would attend to them")
    tensor(case + ", keys", k, (1, 1, 2, 2), full if shape_of(k) == (1, 1, 4, 2) else "")
    expect(close(k, k0) and close(v, v0), case + ": (keys, values) returned", (fmt(k), fmt(v)), (fmt(k0), fmt(v0)),
           "values are the v's, keys the k's" if close(v, k0) or close(k, v0) else "")
    expect(cache.length == 0, case + ": cache.length after one layer's update", cache.length, 0,
           "update must not advance length: every layer writes the same positions, and the model advances "
           "length once, after the last layer")
    case = "the first pass: update(layer 1, two tokens)"
    k, v = pair(case, call(case, cache.update, 1, k1, v1, _name="KVCache.update"), "(keys, values)")
    expect(close(k, k1) and close(v, v1), case, (fmt(k), fmt(v)), (fmt(k1), fmt(v1)),
           "each layer has its own keys and values: index the storage by layer")
    expect(cache.length == 0, case + ": cache.length after the last layer's update", cache.length, 0,
           "update must not advance length, not even at the last layer: the model advances it itself")
    cache.length += 2  # what the model does after its last layer

    # one decoding step: the newest token only; each layer attends to all three positions
    k_new, v_new = torch.tensor([[[[0.5, -1.0]]]]), torch.tensor([[[[2.0, 0.0]]]])
    case = "a decoding step: update(layer 0, one token) after two cached ones"
    k, v = pair(case, call(case, cache.update, 0, k_new, v_new, _name="KVCache.update"), "(keys, values)")
    want_k, want_v = torch.cat([k0, k_new], dim=2), torch.cat([v0, v_new], dim=2)  # (1, 1, 3, 2)
    if shape_of(k) == (1, 1, 1, 2):
        hint = ("return ALL the keys and values so far (the cached ones and the new ones): the new query "
                "attends to the whole past")
    elif shape_of(k) == (1, 1, 4, 2):
        hint = full
    elif shape_of(k) == (1, 1, 3, 2) and close(k[:, :, :2], k1):
        hint = "each layer has its own keys and values: index the storage by layer"
    elif shape_of(k) == (1, 1, 3, 2) and not close(k[:, :, :2], k0):
        hint = "write the new ones at [length, length + T), after the cached ones, not over them"
    else:
        hint = "the keys so far: the cached ones, then the new ones, along the positions' dimension (dim 2)"
    expect(close(k, want_k) and close(v, want_v), case, (fmt(k), fmt(v)), (fmt(want_k), fmt(want_v)), hint)
    case = "a decoding step: update(layer 1, one token)"
    k, v = pair(case, call(case, cache.update, 1, k_new + 10, v_new + 10, _name="KVCache.update"), "(keys, values)")
    want_k, want_v = torch.cat([k1, k_new + 10], dim=2), torch.cat([v1, v_new + 10], dim=2)
    expect(close(k, want_k) and close(v, want_v), case, (fmt(k), fmt(v)), (fmt(want_k), fmt(want_v)),
           "each layer has its own keys and values: index the storage by layer")
    check_cache_in_a_model(KVCache)


def check_cache_in_a_model(KVCache):
    """A tiny GPT decoding three tokens with your cache must give the logits of a full forward pass."""
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=8)).eval()
    ids = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8]])  # row 0: two pads on the left
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    P = 5  # the prompt: 5 columns, then one new token per step
    case = "a tiny GPT: the prompt, then three single-token steps, with your cache"
    cache = call(case, KVCache, gpt.config, 2, 8, "cpu")
    with torch.no_grad():
        for end in range(P, 9):
            start = 0 if end == P else end - 1  # the first pass reads the prompt, then the newest token only
            got, _ = call(case, gpt, ids[:, start:end], attention_mask=mask[:, :end], cache=cache,
                          _name="GPT with your KVCache")
            want, _ = gpt(ids[:, :end], attention_mask=mask[:, :end])
            expect(close(got[:, -1], want[:, -1], 1e-4), f"{case}: logits after {end} tokens, against a full "
                   "forward pass without a cache", fmt(got[:, -1, :4]), fmt(want[:, -1, :4]),
                   "a cached step must see exactly the keys and values a full pass would: all positions so "
                   "far, each layer its own, the newest after the cached ones")
