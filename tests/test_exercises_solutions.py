"""The checks on wrong and correct solutions: every known mistake fails with its own hint, every correct
variant (a loop instead of a vectorised form, another stable formula) passes.

Each wrong solution below is the mistake a student makes, written as a student would; WRONG lists it
with the text its hint must contain. The verdict is the runner's (exercises/__main__.verdict), so the
message tested is the one a student reads: the cause, never a traceback.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import data
import dpo
import generate
import model
import ppo
import reward
import rollout
from common import masked_mean, masked_whiten
from exercises import __main__ as checker
from exercises.checks import CHECKS
from exercises.checks.harness import CUT, IGNORE_INDEX


# ----------------------------------------------------------------------------- render_chat
def render_chat_loop(tokenizer, messages, mask_prompt=True):  # correct, one message at a time
    ids, mask = [tokenizer.bos_id], [0]
    for message in messages:
        content = tokenizer.encode(" " + message["content"])
        answer = message["role"] == "assistant" or not mask_prompt
        ids += [tokenizer.role_ids[message["role"]]] + content + [tokenizer.end_id]
        mask += [0 if mask_prompt else 1] + [int(answer)] * (len(content) + 1)
    return ids, mask


def render_chat_segments(tokenizer, messages, mask_prompt=True):  # correct, as (tokens, mask) segments
    segments = [([tokenizer.bos_id], 0)]
    for message in messages:
        supervised = 1 if (message["role"] == "assistant" or not mask_prompt) else 0
        segments += [([tokenizer.role_ids[message["role"]]], 1 - int(mask_prompt)),
                     (data.encode_content(tokenizer, message["content"]) + [tokenizer.end_id], supervised)]
    return [t for tokens, _ in segments for t in tokens], [m for tokens, m in segments for _ in tokens]


def render_chat_end_unsupervised(tokenizer, messages, mask_prompt=True):
    ids, mask = render_chat_loop(tokenizer, messages, mask_prompt)
    return ids, [0 if t == tokenizer.end_id else m for t, m in zip(ids, mask)]  # wrong: the model never learns to stop


def render_chat_marker_supervised(tokenizer, messages, mask_prompt=True):
    ids, mask = render_chat_loop(tokenizer, messages, mask_prompt)
    return ids, [1 if t == tokenizer.assistant_id else m for t, m in zip(ids, mask)]  # wrong: <|assistant|> is prompt


def render_chat_without_bos(tokenizer, messages, mask_prompt=True):
    ids, mask = render_chat_loop(tokenizer, messages, mask_prompt)
    return ids[1:], mask[1:]


def render_chat_without_space(tokenizer, messages, mask_prompt=True):
    ids, mask = [tokenizer.bos_id], [0]
    for message in messages:
        content = tokenizer.encode(message["content"])  # wrong: no leading space
        ids += [tokenizer.role_ids[message["role"]]] + content + [tokenizer.end_id]
        mask += [0] + [int(message["role"] == "assistant" or not mask_prompt)] * (len(content) + 1)
    return ids, mask


def render_chat_last_answer_only(tokenizer, messages, mask_prompt=True):
    ids, mask = render_chat_loop(tokenizer, messages, mask_prompt)
    last = max(i for i, t in enumerate(ids) if t == tokenizer.assistant_id)
    return ids, [m if i > last else 0 for i, m in enumerate(mask)]  # wrong: earlier answers get no loss


def render_chat_ignoring_mask_prompt(tokenizer, messages, mask_prompt=True):
    return render_chat_loop(tokenizer, messages)  # wrong: always masks the prompt


def render_chat_bos_supervised(tokenizer, messages, mask_prompt=True):
    ids, mask = render_chat_loop(tokenizer, messages, mask_prompt)
    return ids, ([0] if mask_prompt else [1]) + mask[1:]  # wrong: <|bos|> is never predicted


def render_chat_no_marker_mask(tokenizer, messages, mask_prompt=True):
    ids, mask = [tokenizer.bos_id], [0]
    for message in messages:
        content = data.encode_content(tokenizer, message["content"])
        ids += [tokenizer.role_ids[message["role"]]] + content + [tokenizer.end_id]
        mask += [int(message["role"] == "assistant" or not mask_prompt)] * (len(content) + 1)  # wrong: no marker entry
    return ids, mask


# ----------------------------------------------------------------------------- masking
def collate_loop(examples, pad_id, max_len=None, pad_side="right"):  # correct, the rule written out
    T = max(len(ids) for ids, _ in examples) - 1
    input_ids = torch.full((len(examples), T), pad_id)
    targets = torch.full((len(examples), T), IGNORE_INDEX)
    attention = torch.zeros((len(examples), T), dtype=torch.long)
    for b, (ids, mask) in enumerate(examples):
        for t in range(len(ids) - 1):
            input_ids[b, t], attention[b, t] = ids[t], 1
            if mask[t + 1]:
                targets[b, t] = ids[t + 1]
    return {"input_ids": input_ids, "targets": targets, "attention_mask": attention}


def collate_pad_sequence(examples, pad_id, max_len=None, pad_side="right"):  # correct, with pad_sequence
    from torch.nn.utils.rnn import pad_sequence
    ids = [torch.tensor(i) for i, _ in examples]
    masks = [torch.tensor(m) for _, m in examples]
    inputs = pad_sequence([i[:-1] for i in ids], batch_first=True, padding_value=pad_id)
    targets = pad_sequence([torch.where(m[1:].bool(), i[1:], IGNORE_INDEX) for i, m in zip(ids, masks)],
                           batch_first=True, padding_value=IGNORE_INDEX)
    attention = pad_sequence([torch.ones(len(i) - 1, dtype=torch.long) for i in ids], batch_first=True)
    return {"input_ids": inputs, "targets": targets, "attention_mask": attention}


def collate_mask_shifted_by_one(examples, pad_id, max_len=None, pad_side="right"):
    T = max(len(ids) for ids, _ in examples) - 1
    input_ids = torch.full((len(examples), T), pad_id)
    targets = torch.full((len(examples), T), IGNORE_INDEX)
    attention = torch.zeros((len(examples), T), dtype=torch.long)
    for b, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        input_ids[b, :n], attention[b, :n] = torch.tensor(ids[:-1]), 1
        for t in range(n):
            if mask[t]:  # wrong: the mask of the input token, not of the token being predicted
                targets[b, t] = ids[t + 1]
    return {"input_ids": input_ids, "targets": targets, "attention_mask": attention}


def collate_not_shifted(examples, pad_id, max_len=None, pad_side="right"):
    batch = collate_loop(examples, pad_id)
    for b, (ids, mask) in enumerate(examples):
        for t in range(len(ids) - 1):
            if mask[t + 1]:
                batch["targets"][b, t] = ids[t]  # wrong: the input token itself, not the next one
    return batch


def collate_pads_as_pad_id(examples, pad_id, max_len=None, pad_side="right"):
    batch = collate_loop(examples, pad_id)
    batch["targets"][batch["attention_mask"] == 0] = pad_id  # wrong: pads become targets
    return batch


def collate_pads_as_zero(examples, pad_id, max_len=None, pad_side="right"):
    return collate_loop(examples, 0)  # wrong: ignores pad_id


def collate_left_padded(examples, pad_id, max_len=None, pad_side="right"):
    return data.collate(examples, pad_id, pad_side="left")  # wrong: the default is right


def collate_keeps_last_token(examples, pad_id, max_len=None, pad_side="right"):
    T = max(len(ids) for ids, _ in examples)  # wrong: every token an input
    input_ids = torch.full((len(examples), T), pad_id)
    attention = torch.zeros((len(examples), T), dtype=torch.long)
    for b, (ids, _) in enumerate(examples):
        input_ids[b, :len(ids)], attention[b, :len(ids)] = torch.tensor(ids), 1
    targets = data.collate(examples, pad_id)["targets"]
    return {"input_ids": input_ids, "targets": torch.cat([targets, torch.full((len(examples), 1), -100)], 1),
            "attention_mask": attention}


def collate_attends_to_pads(examples, pad_id, max_len=None, pad_side="right"):
    batch = collate_loop(examples, pad_id)
    return {**batch, "attention_mask": torch.ones_like(batch["attention_mask"])}  # wrong: pads are attended to


def collate_floats(examples, pad_id, max_len=None, pad_side="right"):
    return {k: v.float() for k, v in collate_loop(examples, pad_id).items()}  # wrong: cross_entropy needs long


def collate_width_of_first(examples, pad_id, max_len=None, pad_side="right"):
    T = len(examples[0][0]) - 1  # wrong: the first row is not always the longest
    input_ids = torch.full((len(examples), T), pad_id)
    for b, (ids, _) in enumerate(examples):
        input_ids[b, :len(ids) - 1] = torch.tensor(ids[:-1])
    return collate_loop(examples, pad_id)


# ----------------------------------------------------------------------------- sft_loss
def lm_loss_log_softmax(logits, targets, reduction="mean"):  # correct, written out
    logp = F.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    supervised = targets != IGNORE_INDEX
    total = -torch.where(supervised, logp, 0.0).sum()
    return total if reduction == "sum" else total / supervised.sum().clamp(min=1)


def lm_loss_row_loop(logits, targets, reduction="mean"):  # correct, one row at a time
    total, count = logits.new_zeros(()), 0
    for row_logits, row_targets in zip(logits, targets):
        keep = row_targets != IGNORE_INDEX
        if keep.any():
            total = total + F.cross_entropy(row_logits[keep], row_targets[keep], reduction="sum")
            count += int(keep.sum())
    return total if reduction == "sum" else total / max(count, 1)


def lm_loss_over_all_positions(logits, targets, reduction="mean"):
    total = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return total / targets.numel() if reduction == "mean" else total  # wrong: divides by T, not by the supervised


def lm_loss_per_row(logits, targets, reduction="mean"):
    total = model.lm_loss(logits, targets, "sum")
    return total if reduction == "sum" else total / len(targets)  # wrong: divides by B


def lm_loss_mean_of_row_means(logits, targets, reduction="mean"):
    if reduction == "sum":
        return model.lm_loss(logits, targets, "sum")
    rows = [model.lm_loss(logits[b:b + 1], targets[b:b + 1]) for b in range(len(logits))]
    return torch.stack(rows).mean()  # wrong: a row with one answer token weighs as much as one with three


def lm_loss_item(logits, targets, reduction="mean"):
    return model.lm_loss(logits, targets, reduction).item()  # wrong: a float, no gradient


def lm_loss_no_grad(logits, targets, reduction="mean"):
    with torch.no_grad():  # wrong: no gradient
        return model.lm_loss(logits, targets, reduction)


def lm_loss_raw_logits(logits, targets, reduction="mean"):
    picked = -logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # wrong: logits are not logprobs
    supervised = targets != IGNORE_INDEX
    total = (picked * supervised).sum()
    return total if reduction == "sum" else total / supervised.sum().clamp(min=1)


def lm_loss_log_of_softmax(logits, targets, reduction="mean"):
    logp = torch.log(torch.softmax(logits, dim=-1))  # wrong: log 0 = -inf for large logits
    picked = -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    supervised = targets != IGNORE_INDEX
    total = torch.where(supervised, picked, 0.0).sum()
    return total if reduction == "sum" else total / supervised.sum().clamp(min=1)


def lm_loss_ignored_as_token_0(logits, targets, reduction="mean"):
    total = F.cross_entropy(logits.flatten(0, 1), targets.clamp(min=0).flatten(), reduction="sum")  # wrong
    return total if reduction == "sum" else total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def lm_loss_nan_without_targets(logits, targets, reduction="mean"):
    total = model.lm_loss(logits, targets, "sum")
    return total if reduction == "sum" else total / (targets != IGNORE_INDEX).sum()  # wrong: 0 / 0


def lm_loss_always_mean(logits, targets, reduction="mean"):
    return model.lm_loss(logits, targets)  # wrong: ignores reduction


# ----------------------------------------------------------------------------- causal_mask
def causal_mask_loop(attention_mask, T):  # correct, one entry at a time
    B, S = attention_mask.shape
    allowed = torch.zeros(B, 1, T, S, dtype=torch.bool)
    for b in range(B):
        for t in range(T):
            position = S - T + t
            for s in range(S):
                allowed[b, 0, t, s] = s == position or (s <= position and bool(attention_mask[b, s]))
    return allowed


def causal_mask_tril(attention_mask, T):  # correct, with torch.tril
    B, S = attention_mask.shape
    causal = torch.ones(S, S, dtype=torch.bool).tril()[S - T:]  # the last T rows: (T, S)
    keys = attention_mask.bool()[:, None, None, :]
    return (causal & keys) | torch.eye(S, dtype=torch.bool)[S - T:]


def causal_mask_no_key_padding(attention_mask, T):
    B, S = attention_mask.shape
    return torch.ones(S, S, dtype=torch.bool).tril()[S - T:].expand(B, 1, T, S)  # wrong: pads are keys


def causal_mask_no_diagonal(attention_mask, T):
    B, S = attention_mask.shape
    causal = torch.ones(S, S, dtype=torch.bool).tril()[S - T:]
    return causal & attention_mask.bool()[:, None, None, :]  # wrong: a pad query's row is all False


def causal_mask_queries_at_the_start(attention_mask, T):
    B, S = attention_mask.shape
    q = torch.arange(T).view(T, 1)  # wrong: the queries are the LAST T positions
    k = torch.arange(S).view(1, S)
    return (((k <= q) & attention_mask.bool().view(B, 1, S)) | (k == q)).unsqueeze(1)


def causal_mask_future(attention_mask, T):
    return causal_mask_tril(attention_mask, T).transpose(-1, -2) if T == attention_mask.size(1) else \
        model.causal_mask(attention_mask, T)  # wrong: the transposed triangle


def causal_mask_on_queries(attention_mask, T):
    B, S = attention_mask.shape
    causal = torch.ones(S, S, dtype=torch.bool).tril()[S - T:]
    queries = attention_mask.bool()[:, S - T:, None]  # wrong: masks the pad queries' rows, not the pad keys
    return ((causal & queries) | torch.eye(S, dtype=torch.bool)[S - T:]).unsqueeze(1)


def causal_mask_strict(attention_mask, T):
    B, S = attention_mask.shape
    q = torch.arange(S - T, S).view(T, 1)
    k = torch.arange(S).view(1, S)
    return ((k < q) & attention_mask.bool().view(B, 1, S)).unsqueeze(1)  # wrong: s < t, no diagonal either


def causal_mask_without_heads(attention_mask, T):
    return model.causal_mask(attention_mask, T)[:, 0]  # wrong: (B, T, S)


def causal_mask_float(attention_mask, T):
    return model.causal_mask(attention_mask, T).float()  # wrong: SDPA adds a float mask


# ----------------------------------------------------------------------------- kv_cache_step
class KVCacheLists:  # correct: a list per layer, grown with torch.cat
    def __init__(self, config, batch_size, max_len, device, dtype=torch.float32):
        self.k, self.v, self.length = [None] * config.n_layer, [None] * config.n_layer, 0

    def update(self, layer, k, v):
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k, v
        else:
            self.k[layer], self.v[layer] = torch.cat([self.k[layer], k], 2), torch.cat([self.v[layer], v], 2)
        return self.k[layer], self.v[layer]


class KVCacheAdvancesLength(generate.KVCache):
    def update(self, layer, k, v):
        keys, values = super().update(layer, k, v)
        self.length += k.size(2)  # wrong: the model advances it, once, after the last layer
        return keys, values


class KVCacheReturnsNewOnly(generate.KVCache):
    def update(self, layer, k, v):
        super().update(layer, k, v)
        return k, v  # wrong: the new query must see the whole past


class KVCacheReturnsWholeBuffer(generate.KVCache):
    def update(self, layer, k, v):
        super().update(layer, k, v)
        return self.k[layer], self.v[layer]  # wrong: the unfilled zeros are not keys


class KVCacheOneBufferForAllLayers(generate.KVCache):
    def update(self, layer, k, v):
        return super().update(0, k, v)  # wrong: every layer overwrites the others


class KVCacheOverwrites(generate.KVCache):
    def update(self, layer, k, v):
        T = k.size(2)
        self.k[layer, :, :, :T], self.v[layer, :, :, :T] = k, v  # wrong: writes over the cached ones
        return self.k[layer, :, :, :self.length + T], self.v[layer, :, :, :self.length + T]


class KVCacheAdvancesLengthAtTheLastLayer(generate.KVCache):
    def update(self, layer, k, v):
        keys, values = super().update(layer, k, v)
        if layer == self.k.size(0) - 1:
            self.length += k.size(2)  # wrong: the model does it too, so the positions advance twice
        return keys, values


class KVCacheKeysForValues(generate.KVCache):
    def update(self, layer, k, v):
        keys, _ = super().update(layer, k, v)
        return keys, keys  # wrong: copy-paste


class KVCacheWithoutLength:
    def __init__(self, config, batch_size, max_len, device, dtype=torch.float32):
        self.inner = generate.KVCache(config, batch_size, max_len, device, dtype)  # wrong: no self.length

    def update(self, layer, k, v):
        return self.inner.update(layer, k, v)


# ----------------------------------------------------------------------------- bradley_terry
def bt_softplus(chosen, rejected, margin=0.0):
    return F.softplus(rejected - chosen + margin)


def bt_relu_log1p(chosen, rejected, margin=0.0):
    x = chosen - rejected - margin  # stable: relu(-x) + log(1 + e^{-|x|}); at a tie autograd's subgradient is 0
    return F.relu(-x) + torch.log1p(torch.exp(-x.abs()))


def bt_clamp_log1p(chosen, rejected, margin=0.0):
    x = chosen - rejected - margin
    return (-x).clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


def bt_logaddexp(chosen, rejected, margin=0.0):
    x = chosen - rejected - margin
    return torch.logaddexp(torch.zeros_like(x), -x)


def bt_bce(chosen, rejected, margin=0.0):
    x = chosen - rejected - margin
    return F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none")


def bt_loop(chosen, rejected, margin=0.0):
    margin = torch.as_tensor(margin).expand(chosen.shape)
    return torch.stack([-F.logsigmoid(c - r - m) for c, r, m in zip(chosen, rejected, margin)])


def bt_sign_flipped(chosen, rejected, margin=0.0):
    return -F.logsigmoid(rejected - chosen - margin)


def bt_log_of_sigmoid(chosen, rejected, margin=0.0):
    return -torch.log(torch.sigmoid(chosen - rejected - margin))  # wrong: inf at large margins


def bt_margin_added(chosen, rejected, margin=0.0):
    return -F.logsigmoid(chosen - rejected + margin)


def bt_margin_ignored(chosen, rejected, margin=0.0):
    return -F.logsigmoid(chosen - rejected)


def bt_item(chosen, rejected, margin=0.0):
    margin = torch.as_tensor(margin).expand(chosen.shape)
    return torch.tensor([-F.logsigmoid(c - r - m).item() for c, r, m in zip(chosen, rejected, margin)])  # wrong


def bt_epsilon(chosen, rejected, margin=0.0):
    return -torch.log(torch.sigmoid(chosen - rejected - margin) + 1e-8)  # wrong: caps the loss at 18.4


def bt_mean(chosen, rejected, margin=0.0):
    return -F.logsigmoid(chosen - rejected - margin).mean()  # wrong: one loss per pair


def bt_rejected_detached(chosen, rejected, margin=0.0):
    return -F.logsigmoid(chosen - rejected.detach() - margin)  # wrong: the rejected answer's score never learns


def bt_where(chosen, rejected, margin=0.0):
    x = chosen - rejected - margin  # finite values, but the branch not taken overflows: NaN gradients
    return torch.where(x > 0, torch.log1p(torch.exp(-x)), -x + torch.log1p(torch.exp(x)))


# ----------------------------------------------------------------------------- response_logprobs
def response_logprobs_loop(policy, ids, attention_mask, prompt_width, temperature):  # correct, per token
    logits, _ = policy(ids, attention_mask=attention_mask)
    columns = []
    for t in range(ids.size(1) - prompt_width):
        logp = F.log_softmax(logits[:, prompt_width - 1 + t] / temperature, dim=-1)
        columns.append(logp.gather(-1, ids[:, prompt_width + t, None]).squeeze(-1))
    return torch.stack(columns, dim=1), None


def response_logprobs_cross_entropy(policy, ids, attention_mask, prompt_width, temperature):  # correct
    logits, _ = policy(ids, attention_mask=attention_mask)
    logits = logits[:, prompt_width - 1:-1] / temperature
    targets = ids[:, prompt_width:]
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    return -ce, None


def response_logprobs_not_shifted(policy, ids, attention_mask, prompt_width, temperature):
    logits, _ = policy(ids, attention_mask=attention_mask)
    logp = F.log_softmax(logits[:, prompt_width:] / temperature, dim=-1)  # wrong: column t scores token t + 1
    return logp.gather(-1, ids[:, prompt_width:, None]).squeeze(-1), None


def response_logprobs_raw(policy, ids, attention_mask, prompt_width, temperature):
    logits, _ = policy(ids, attention_mask=attention_mask)
    return (logits[:, prompt_width - 1:-1] / temperature).gather(-1, ids[:, prompt_width:, None]).squeeze(-1), None


def response_logprobs_no_temperature(policy, ids, attention_mask, prompt_width, temperature):
    return rollout.response_logprobs(policy, ids, attention_mask, prompt_width, 1.0)


def response_logprobs_temperature_after(policy, ids, attention_mask, prompt_width, temperature):
    logprobs, entropy = rollout.response_logprobs(policy, ids, attention_mask, prompt_width, 1.0)
    return logprobs / temperature, entropy  # wrong: the logprobs, not the logits, divided by T


def response_logprobs_every_position(policy, ids, attention_mask, prompt_width, temperature):
    logits, _ = policy(ids, attention_mask=attention_mask)
    return model.logprobs_from_logits(logits[:, :-1], ids[:, 1:], temperature), None  # wrong: the prompt's too


def response_logprobs_no_grad(policy, ids, attention_mask, prompt_width, temperature):
    with torch.no_grad():  # wrong: PPO's ratio needs the gradient
        return rollout.response_logprobs(policy, ids, attention_mask, prompt_width, temperature)


def response_logprobs_no_mask(policy, ids, attention_mask, prompt_width, temperature):
    logits, _ = policy(ids)  # wrong: left-padded rows need the attention mask
    return model.logprobs_from_logits(logits[:, prompt_width - 1:-1], ids[:, prompt_width:], temperature), None


def response_logprobs_mask_as_targets(policy, ids, attention_mask, prompt_width, temperature):
    logits, _ = policy(ids, attention_mask)  # wrong: the second argument is targets
    return model.logprobs_from_logits(logits[:, prompt_width - 1:-1], ids[:, prompt_width:], temperature), None


def response_logprobs_response_only(policy, ids, attention_mask, prompt_width, temperature):
    logits, _ = policy(ids[:, prompt_width - 1:], attention_mask=attention_mask[:, prompt_width - 1:])  # wrong
    return model.logprobs_from_logits(logits[:, :-1], ids[:, prompt_width:], temperature), None


def response_logprobs_log_of_softmax(policy, ids, attention_mask, prompt_width, temperature):
    logits, _ = policy(ids, attention_mask=attention_mask)
    logp = torch.log(torch.softmax(logits[:, prompt_width - 1:-1] / temperature, dim=-1))  # wrong: -inf
    return logp.gather(-1, ids[:, prompt_width:, None]).squeeze(-1), None


# ----------------------------------------------------------------------------- kl_penalty
def kl_penalty_loop(logprobs, ref_logprobs, scores, response_mask, kl_coef):  # correct, row by row
    non_score = -kl_coef * (logprobs - ref_logprobs) * response_mask
    rewards = non_score.clone()
    for b in range(len(scores)):
        last = int(response_mask[b].sum()) - 1  # right padding: the real tokens come first
        rewards[b, last] += scores[b]
    return rewards, non_score


def kl_score_on_last_column(logprobs, ref_logprobs, scores, response_mask, kl_coef):
    non_score = -kl_coef * (logprobs - ref_logprobs) * response_mask
    rewards = non_score.clone()
    rewards[:, -1] += scores  # wrong: the last column is a pad in padded rows
    return rewards, non_score


def kl_not_masked(logprobs, ref_logprobs, scores, response_mask, kl_coef):
    non_score = -kl_coef * (logprobs - ref_logprobs)  # wrong: pads get a penalty from junk logprobs
    rewards = non_score.clone()
    rewards[torch.arange(len(scores)), reward.last_token_index(response_mask)] += scores
    return rewards, non_score


def kl_sign_flipped(logprobs, ref_logprobs, scores, response_mask, kl_coef):
    return ppo.kl_penalty_rewards(ref_logprobs, logprobs, scores, response_mask, kl_coef)  # wrong: ref - logp


def kl_without_coef(logprobs, ref_logprobs, scores, response_mask, kl_coef):
    return ppo.kl_penalty_rewards(logprobs, ref_logprobs, scores, response_mask, 1.0)


def kl_score_in_place(logprobs, ref_logprobs, scores, response_mask, kl_coef):
    non_score = -kl_coef * (logprobs - ref_logprobs) * response_mask
    rewards = non_score  # wrong: the same tensor, so the score lands in non_score too
    rewards[torch.arange(len(scores)), reward.last_token_index(response_mask)] += scores
    return rewards, non_score


def kl_score_one_past(logprobs, ref_logprobs, scores, response_mask, kl_coef):
    non_score = -kl_coef * (logprobs - ref_logprobs) * response_mask
    rewards = non_score.clone()
    rewards[torch.arange(len(scores)), response_mask.sum(1).long()] += scores  # wrong: the first pad (or past the end)
    return rewards, non_score


def kl_score_everywhere(logprobs, ref_logprobs, scores, response_mask, kl_coef):
    non_score = -kl_coef * (logprobs - ref_logprobs) * response_mask
    return non_score + scores[:, None] * response_mask, non_score  # wrong: the score on every token


def kl_score_first(logprobs, ref_logprobs, scores, response_mask, kl_coef):
    non_score = -kl_coef * (logprobs - ref_logprobs) * response_mask
    rewards = non_score.clone()
    rewards[:, 0] += scores  # wrong: the first token
    return rewards, non_score


def kl_coef_on_score(logprobs, ref_logprobs, scores, response_mask, kl_coef):
    return ppo.kl_penalty_rewards(logprobs, ref_logprobs, kl_coef * scores, response_mask, kl_coef)


# ----------------------------------------------------------------------------- gae
def gae_python_loop(rewards, values, response_mask, gamma=1.0, lam=0.95):  # correct, plain Python per row
    advantages = torch.zeros_like(rewards)
    for b in range(rewards.size(0)):
        n = int(response_mask[b].sum())
        next_advantage, next_value = 0.0, 0.0
        for t in reversed(range(n)):
            delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
            next_advantage = delta + gamma * lam * next_advantage
            advantages[b, t], next_value = next_advantage, float(values[b, t])
    return advantages, (advantages + values) * response_mask


def gae_vectorised(rewards, values, response_mask, gamma=1.0, lam=0.95):  # correct, one column at a time
    return gae_written(rewards, values, response_mask, lam, gamma, gamma)


def gae_without_lambda(rewards, values, response_mask, gamma=1.0, lam=0.95):
    return ppo.gae(rewards, values, response_mask, gamma, lam=1.0)


def gae_without_gamma(rewards, values, response_mask, gamma=1.0, lam=0.95):
    return ppo.gae(rewards, values, response_mask, 1.0, lam)


def gae_written(rewards, values, response_mask, lam, delta_gamma, recursion_gamma, mask_inputs=True):
    """GAE with the discounts of the delta and of the recursion given apart: the wrong ones below."""
    if mask_inputs:
        rewards, values = rewards * response_mask, values * response_mask
    advantages = torch.zeros_like(rewards)
    next_advantage, next_value = torch.zeros(rewards.size(0)), torch.zeros(rewards.size(0))
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + delta_gamma * next_value - values[:, t]
        next_advantage = (delta + recursion_gamma * lam * next_advantage) * response_mask[:, t]
        advantages[:, t], next_value = next_advantage, values[:, t]
    return advantages, (advantages + values) * response_mask


def gae_gamma_only_in_delta(rewards, values, response_mask, gamma=1.0, lam=0.95):
    return gae_written(rewards, values, response_mask, lam, delta_gamma=gamma, recursion_gamma=1.0)


def gae_gamma_only_in_recursion(rewards, values, response_mask, gamma=1.0, lam=0.95):
    return gae_written(rewards, values, response_mask, lam, delta_gamma=1.0, recursion_gamma=gamma)


def gae_pads_not_masked(rewards, values, response_mask, gamma=1.0, lam=0.95):
    # wrong: the last real token's V_{t+1} is the pad's junk value
    return gae_written(rewards, values, response_mask, lam, gamma, gamma, mask_inputs=False)


def gae_returns_without_values(rewards, values, response_mask, gamma=1.0, lam=0.95):
    advantages, _ = ppo.gae(rewards, values, response_mask, gamma, lam)
    return advantages, advantages  # wrong: the critic's target is A + V


def gae_returns_on_pads(rewards, values, response_mask, gamma=1.0, lam=0.95):
    advantages, _ = ppo.gae(rewards, values, response_mask, gamma, lam)
    return advantages, advantages + values  # wrong: the pads' junk values


def gae_forwards(rewards, values, response_mask, gamma=1.0, lam=0.95):
    rewards, values = rewards * response_mask, values * response_mask
    advantages, previous = torch.zeros_like(rewards), torch.zeros(rewards.size(0))
    for t in range(rewards.size(1)):  # wrong: A_t depends on A_{t+1}, which comes later
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros(rewards.size(0))
        previous = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * previous
        advantages[:, t] = previous
    advantages = advantages * response_mask
    return advantages, advantages + values


# ----------------------------------------------------------------------------- rollout_advantages
def advantages_written_out(batch, kl_coef, cfg):  # correct, with the unbiased variance (TRL's masked_var)
    mask = batch["response_mask"]
    rewards, non_score = kl_penalty_loop(batch["logprobs"], batch["ref_logprobs"], batch["scores"], mask, kl_coef)
    if cfg.whiten_rewards:
        valid = rewards[mask.bool()]
        rewards = ((rewards - valid.mean()) / valid.std() + valid.mean()) * mask
    advantages, returns = gae_python_loop(rewards, batch["values"], mask, cfg.gamma, cfg.lam)
    valid = advantages[mask.bool()]
    return (advantages - valid.mean()) / valid.std() * mask, returns, non_score


def advantages_composed(batch, kl_coef, cfg, whiten=True, returns_from_whitened=False, zero_pads=True,
                        per_row=False, keep_mean=False, whiten_rewards=None, rewards_keep_mean=True,
                        gamma=None, lam=None, third="non_score"):
    """The step from the project's pieces, with a knob per mistake (the defaults are right)."""
    mask = batch["response_mask"]
    rewards, non_score = ppo.kl_penalty_rewards(batch["logprobs"], batch["ref_logprobs"], batch["scores"], mask,
                                                kl_coef)
    if cfg.whiten_rewards if whiten_rewards is None else whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=not rewards_keep_mean)
    advantages, returns = ppo.gae(rewards, batch["values"], mask, cfg.gamma if gamma is None else gamma,
                                  cfg.lam if lam is None else lam)
    if per_row:
        whitened = torch.stack([masked_whiten(a, m) for a, m in zip(advantages, mask)])
    elif whiten:
        whitened = masked_whiten(advantages, mask, shift_mean=not keep_mean)
    else:
        whitened = advantages
    if not zero_pads:
        whitened = (advantages - masked_mean(advantages, mask)) / ppo.masked_var(advantages, mask).sqrt()
    if returns_from_whitened:
        returns = whitened + batch["values"] * mask
    return whitened, returns, {"non_score": non_score, "rewards": rewards}[third]


def knob(**kwargs):
    def rewards_and_advantages(batch, kl_coef, cfg):
        return advantages_composed(batch, kl_coef, cfg, **kwargs)
    return rewards_and_advantages


# ----------------------------------------------------------------------------- ppo_losses
def policy_loss_where(logprobs, old_logprobs, advantages, response_mask, cliprange=0.2):  # correct
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.where(advantages >= 0, torch.minimum(ratio, torch.tensor(1 + cliprange)),
                          torch.maximum(ratio, torch.tensor(1 - cliprange)))  # min(r A, clip(r) A), by A's sign
    per_token = -advantages * clipped
    return (per_token * response_mask).sum() / response_mask.sum(), {}


def value_loss_loop(values, old_values, returns, response_mask, cliprange_value=0.2):  # correct, per token
    total, count = values.new_zeros(()), 0
    for v, old, r, m in zip(values.flatten(), old_values.flatten(), returns.flatten(), response_mask.flatten()):
        if m:
            clipped = old + torch.clamp(v - old, -cliprange_value, cliprange_value)
            total, count = total + torch.maximum((v - r) ** 2, (clipped - r) ** 2), count + 1
    return 0.5 * total / count, None


def policy_loss_objective(logprobs, old_logprobs, advantages, response_mask, cliprange=0.2):  # correct
    ratio = torch.exp(logprobs - old_logprobs)  # the paper's objective min(r A, clip(r) A), negated
    objective = torch.min(ratio * advantages, torch.clamp(ratio, 1 - cliprange, 1 + cliprange) * advantages)
    return -masked_mean(objective, response_mask), {}


def policy_loss_without_clip(logprobs, old_logprobs, advantages, response_mask, cliprange=0.2):
    return masked_mean(-advantages * (logprobs - old_logprobs).exp(), response_mask), {}


def policy_loss_min(logprobs, old_logprobs, advantages, response_mask, cliprange=0.2):
    ratio = (logprobs - old_logprobs).exp()
    per_token = torch.min(-advantages * ratio, -advantages * ratio.clamp(1 - cliprange, 1 + cliprange))  # wrong
    return masked_mean(per_token, response_mask), {}


def policy_loss_no_exp(logprobs, old_logprobs, advantages, response_mask, cliprange=0.2):
    ratio = logprobs - old_logprobs  # wrong: a log-ratio, not a ratio
    per_token = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cliprange, 1 + cliprange))
    return masked_mean(per_token, response_mask), {}


def policy_loss_pads_included(logprobs, old_logprobs, advantages, response_mask, cliprange=0.2):
    ratio = (logprobs - old_logprobs).exp()
    return torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)).mean(), {}


def policy_loss_row_means(logprobs, old_logprobs, advantages, response_mask, cliprange=0.2):
    ratio = (logprobs - old_logprobs).exp()
    per_token = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cliprange, 1 + cliprange))
    return ((per_token * response_mask).sum(1) / response_mask.sum(1)).mean(), {}  # wrong: a mean of row means


def policy_loss_ratio_detached(logprobs, old_logprobs, advantages, response_mask, cliprange=0.2):
    return ppo.policy_loss(logprobs.detach(), old_logprobs, advantages, response_mask, cliprange)  # wrong


def value_loss_without_clip(values, old_values, returns, response_mask, cliprange_value=0.2):
    return 0.5 * masked_mean((values - returns) ** 2, response_mask), 0.0


def value_loss_clipped_around_returns(values, old_values, returns, response_mask, cliprange_value=0.2):
    clipped = returns + (values - returns).clamp(-cliprange_value, cliprange_value)  # wrong: around R, not V_old
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), response_mask), 0.0


def value_loss_min(values, old_values, returns, response_mask, cliprange_value=0.2):
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    return 0.5 * masked_mean(torch.min((values - returns) ** 2, (clipped - returns) ** 2), response_mask), 0.0


def value_loss_without_half(values, old_values, returns, response_mask, cliprange_value=0.2):
    loss, clipfrac = ppo.value_loss(values, old_values, returns, response_mask, cliprange_value)
    return 2 * loss, clipfrac


def value_loss_clipped_only(values, old_values, returns, response_mask, cliprange_value=0.2):
    clipped = values.clamp(old_values - cliprange_value, old_values + cliprange_value)
    return 0.5 * masked_mean((clipped - returns) ** 2, response_mask), 0.0  # wrong: the max of both is the loss


def value_loss_pads_included(values, old_values, returns, response_mask, cliprange_value=0.2):
    return ppo.value_loss(values, old_values, returns, torch.ones_like(response_mask), cliprange_value)


def value_loss_no_grad(values, old_values, returns, response_mask, cliprange_value=0.2):
    with torch.no_grad():
        return ppo.value_loss(values, old_values, returns, response_mask, cliprange_value)


# ----------------------------------------------------------------------------- adaptive_kl
class KLControllerClamp:  # correct, with torch.clamp and a tensor value
    def __init__(self, kl_coef, target, horizon):
        self.value, self.target, self.horizon = torch.tensor(float(kl_coef), dtype=torch.float64), target, horizon

    def update(self, kl, n_answers):
        error = torch.clamp(torch.tensor(kl / self.target - 1, dtype=torch.float64), -0.2, 0.2)
        self.value = self.value * (1 + error * n_answers / self.horizon)


def controller(step):
    """A controller class whose update sets value = step(value, kl, target, n, horizon)."""
    class Controller:
        def __init__(self, kl_coef, target, horizon):
            self.value, self.first, self.target, self.horizon = kl_coef, kl_coef, target, horizon

        def update(self, kl, n_answers):
            self.value = step(self, kl, n_answers)
    return Controller


def clip(x):
    return min(max(x, -0.2), 0.2)


KL_WITHOUT_CLIP = controller(lambda c, kl, n: c.value * (1 + (kl / c.target - 1) * n / c.horizon))
KL_ABSOLUTE_ERROR = controller(lambda c, kl, n: c.value * (1 + clip(kl - c.target) * n / c.horizon))
KL_SIGN_FLIPPED = controller(lambda c, kl, n: c.value * (1 - clip(kl / c.target - 1) * n / c.horizon))
KL_WITHOUT_SCALE = controller(lambda c, kl, n: c.value * (1 + clip(kl / c.target - 1)))
KL_ADDITIVE = controller(lambda c, kl, n: c.value + clip(kl / c.target - 1) * n / c.horizon)
KL_CLIP_AFTER_SCALE = controller(lambda c, kl, n: c.value * (1 + clip((kl / c.target - 1) * n / c.horizon)))
KL_INVERTED = controller(lambda c, kl, n: c.value * (1 + clip(c.target / kl - 1) * n / c.horizon))
KL_FROM_THE_START = controller(lambda c, kl, n: c.first * (1 + clip(kl / c.target - 1) * n / c.horizon))


class KLControllerReturnsValue(ppo.AdaptiveKLController):
    def update(self, kl, n_answers):
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        return self.value * (1 + error * n_answers / self.horizon)  # wrong: self.value never changes


# ----------------------------------------------------------------------------- dpo_loss
def sequence_logprobs_cross_entropy(logits, targets, loss_mask):  # correct: cross_entropy skips -100 itself
    targets = torch.where(loss_mask.bool(), targets, IGNORE_INDEX)
    ce = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return -ce.sum(dim=-1)


def sequence_logprobs_loop(logits, targets, loss_mask):  # correct, one row and token at a time
    rows = []
    for row_logits, row_targets, row_mask in zip(logits, targets, loss_mask):
        total = row_logits.new_zeros(())
        for position in torch.nonzero(row_mask).flatten():
            total = total + F.log_softmax(row_logits[position], dim=-1)[row_targets[position]]
        rows.append(total)
    return torch.stack(rows)


def dpo_loss_softplus(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                      beta=0.1, loss_type="dpo", label_smoothing=0.0):  # correct, softplus(-x) = -log sigmoid(x)
    chosen, rejected = policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps
    h = chosen - rejected
    losses = {"dpo": F.softplus(-beta * h),
              "ipo": (h - 1 / (2 * beta)) ** 2,
              "conservative": (1 - label_smoothing) * F.softplus(-beta * h) + label_smoothing * F.softplus(beta * h)}
    return losses[loss_type], beta * chosen, beta * rejected


def sequence_logprobs_mean(logits, targets, loss_mask):
    return dpo.sequence_logprobs(logits, targets, loss_mask) / loss_mask.sum(dim=-1)  # wrong: a mean


def sequence_logprobs_raw(logits, targets, loss_mask):
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # wrong: logits, not logprobs
    return (picked * loss_mask).sum(-1)


def sequence_logprobs_unclamped(logits, targets, loss_mask):
    logp = F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # wrong: index -100
    return (logp * loss_mask).sum(-1)


def sequence_logprobs_no_grad(logits, targets, loss_mask):
    with torch.no_grad():
        return dpo.sequence_logprobs(logits, targets, loss_mask)


def sequence_logprobs_unmasked(logits, targets, loss_mask):
    return model.logprobs_from_logits(logits, targets.clamp(min=0)).sum(-1)  # wrong: the prompt counts


def sequence_logprobs_shifted_again(logits, targets, loss_mask):
    return dpo.sequence_logprobs(logits[:, :-1], targets[:, 1:], loss_mask[:, 1:])  # wrong: already aligned


def sequence_logprobs_log_of_softmax(logits, targets, loss_mask):
    logp = torch.log(torch.softmax(logits, dim=-1)).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(loss_mask.bool(), logp, 0.0).sum(-1)  # wrong: -inf for large logits


def dpo_beta_outside(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                     beta=0.1, loss_type="dpo", label_smoothing=0.0):
    losses, chosen, rejected = dpo.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                            ref_rejected_logps, 1.0, loss_type, label_smoothing)
    return beta * losses, beta * chosen, beta * rejected  # wrong: -beta log sigmoid(h)


def dpo_without_reference(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                          beta=0.1, loss_type="dpo", label_smoothing=0.0):
    zero = torch.zeros_like(policy_chosen_logps)
    return dpo.dpo_loss(policy_chosen_logps, policy_rejected_logps, zero, zero, beta, loss_type, label_smoothing)


def dpo_sign_flipped(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                     beta=0.1, loss_type="dpo", label_smoothing=0.0):
    losses, _, _ = dpo.dpo_loss(policy_rejected_logps, policy_chosen_logps, ref_rejected_logps, ref_chosen_logps,
                                beta, loss_type, label_smoothing)
    return losses, beta * (policy_chosen_logps - ref_chosen_logps), beta * (policy_rejected_logps - ref_rejected_logps)


def dpo_rewards_without_beta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                             beta=0.1, loss_type="dpo", label_smoothing=0.0):
    losses, chosen, rejected = dpo.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                            ref_rejected_logps, beta, loss_type, label_smoothing)
    return losses, chosen / beta, rejected / beta


def dpo_ipo_target_1_over_beta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                               beta=0.1, loss_type="dpo", label_smoothing=0.0):
    out = dpo.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
                       loss_type, label_smoothing)
    if loss_type != "ipo":
        return out
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return (h - 1 / beta) ** 2, out[1], out[2]


def dpo_conservative_swapped(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                             beta=0.1, loss_type="dpo", label_smoothing=0.0):
    if loss_type == "conservative":
        label_smoothing = 1 - label_smoothing  # wrong: eps weighs the flipped label
    return dpo.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
                        loss_type, label_smoothing)


def dpo_log_of_sigmoid(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                       beta=0.1, loss_type="dpo", label_smoothing=0.0):
    out = dpo.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
                       loss_type, label_smoothing)
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return (-torch.log(torch.sigmoid(beta * h)) if loss_type == "dpo" else out[0]), out[1], out[2]


def dpo_mean(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta=0.1, loss_type="dpo", label_smoothing=0.0):
    losses, chosen, rejected = dpo.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                            ref_rejected_logps, beta, loss_type, label_smoothing)
    return losses.mean(), chosen, rejected  # wrong: one loss per pair


def dpo_detached(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                 beta=0.1, loss_type="dpo", label_smoothing=0.0):
    return dpo.dpo_loss(policy_chosen_logps.detach(), policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                        beta, loss_type, label_smoothing)  # wrong: the chosen answer gets no gradient


# ----------------------------------------------------------------------------- the tables
RENDER, DATA, SFT = data.render_chat, data.collate, model.lm_loss
POLICY, VALUE = ppo.policy_loss, ppo.value_loss
DPO, SEQUENCE = dpo.dpo_loss, dpo.sequence_logprobs

WRONG = [  # (exercise, functions, text the hint must contain)
    ("render_chat", [render_chat_end_unsupervised], "the model must learn to stop"),
    ("render_chat", [render_chat_marker_supervised], "the <|assistant|> marker is prompt"),
    ("render_chat", [render_chat_without_bos], "start with <|bos|>"),
    ("render_chat", [render_chat_without_space], "with one leading space"),
    ("render_chat", [render_chat_last_answer_only], "EVERY assistant message is supervised"),
    ("render_chat", [render_chat_ignoring_mask_prompt], "you masked the prompt anyway"),
    ("render_chat", [render_chat_bos_supervised], "even then <|bos|> is 0"),
    ("render_chat", [render_chat_no_marker_mask], "len(ids) == len(loss_mask)"),
    ("masking", [collate_mask_shifted_by_one], "a mask shifted by one"),
    ("masking", [collate_not_shifted], "the targets are the NEXT tokens"),
    ("masking", [collate_pads_as_pad_id], "a pad is never a target"),
    ("masking", [collate_pads_as_zero], "pad with pad_id (here 9), not 0"),
    ("masking", [collate_left_padded], "pad on the right"),
    ("masking", [collate_keeps_last_token], "inputs are ids[:-1]"),
    ("masking", [collate_floats], "cross_entropy needs long targets"),
    ("masking", [collate_attends_to_pads], "pads get 0: the model must not attend to them"),
    ("masking", [collate_width_of_first], "your function collate_width_of_first raised RuntimeError on case 'three"),
    ("sft_loss", [lm_loss_over_all_positions], "divide by how many are left"),
    ("sft_loss", [lm_loss_mean_of_row_means], "not the mean of each row's mean"),
    ("sft_loss", [lm_loss_per_row], "not by the number of rows"),
    ("sft_loss", [lm_loss_item], CUT),
    ("sft_loss", [lm_loss_no_grad], CUT),
    ("sft_loss", [lm_loss_raw_logits], "logits are not log-probabilities"),
    ("sft_loss", [lm_loss_log_of_softmax], "log(softmax(x)) underflows"),
    ("sft_loss", [lm_loss_ignored_as_token_0], "you read them as token 0"),
    ("sft_loss", [lm_loss_nan_without_targets], "0 / 0 is NaN"),
    ("sft_loss", [lm_loss_always_mean], 'reduction="sum" returns the sum'),
    ("causal_mask", [causal_mask_no_key_padding], "keys that are pads (attention_mask 0) must be masked out"),
    ("causal_mask", [causal_mask_no_diagonal], "a pad query's row must not be all False"),
    ("causal_mask", [causal_mask_queries_at_the_start], "the T queries are the LAST T"),
    ("causal_mask", [causal_mask_future], "never after"),
    ("causal_mask", [causal_mask_strict], "a query also sees its own key"),
    ("causal_mask", [causal_mask_on_queries], "mask the KEYS that are pads"),
    ("causal_mask", [causal_mask_without_heads], "the heads' dimension"),
    ("causal_mask", [causal_mask_float], "ADDS a float mask"),
    ("kv_cache_step", [KVCacheAdvancesLength], "update must not advance length"),
    ("kv_cache_step", [KVCacheReturnsNewOnly], "return ALL the keys and values so far"),
    ("kv_cache_step", [KVCacheReturnsWholeBuffer], "return only the filled positions"),
    ("kv_cache_step", [KVCacheOneBufferForAllLayers], "each layer has its own keys and values"),
    ("kv_cache_step", [KVCacheOverwrites], "after the cached ones, not over them"),
    ("kv_cache_step", [KVCacheAdvancesLengthAtTheLastLayer], "not even at the last layer"),
    ("kv_cache_step", [KVCacheKeysForValues], "values are the v's"),
    ("kv_cache_step", [KVCacheWithoutLength], "keep self.length = 0 at the start"),
    ("bradley_terry", [bt_sign_flipped], "yours is -log sigmoid(r_rejected - r_chosen)"),
    ("bradley_terry", [bt_log_of_sigmoid], "needs a stable form"),
    ("bradley_terry", [bt_margin_added], "SUBTRACT the margin"),
    ("bradley_terry", [bt_margin_ignored], "you ignored the margin"),
    ("bradley_terry", [bt_item], CUT),
    ("bradley_terry", [bt_epsilon], "an epsilon inside the log or a clamp caps it"),
    ("bradley_terry", [bt_mean], "return one loss per pair"),
    ("bradley_terry", [bt_rejected_detached], "no gradient reaches rejected"),
    ("bradley_terry", [bt_where], "torch.where of an overflowing branch"),
    ("response_logprobs", [response_logprobs_not_shifted], "the logits at column t predict token t + 1"),
    ("response_logprobs", [response_logprobs_raw], "logits are not log-probabilities"),
    ("response_logprobs", [response_logprobs_no_temperature], "divide the logits by the temperature"),
    ("response_logprobs", [response_logprobs_temperature_after], "divide the LOGITS by T, before log_softmax"),
    ("response_logprobs", [response_logprobs_every_position], "one logprob per RESPONSE token"),
    ("response_logprobs", [response_logprobs_no_grad], CUT),
    ("response_logprobs", [response_logprobs_no_mask], "pass attention_mask: the prompts are left-padded"),
    ("response_logprobs", [response_logprobs_mask_as_targets], "by name: the model's second argument is targets"),
    ("response_logprobs", [response_logprobs_response_only], "run the policy on the whole rows"),
    ("response_logprobs", [response_logprobs_log_of_softmax], "log(softmax(x)) underflows"),
    ("kl_penalty", [kl_score_on_last_column], "you put it on the last column"),
    ("kl_penalty", [kl_not_masked], "pads must carry no penalty: multiply by response_mask"),
    ("kl_penalty", [kl_sign_flipped], "the sign: a token the policy likes MORE"),
    ("kl_penalty", [kl_without_coef], "multiply by kl_coef"),
    ("kl_penalty", [kl_score_in_place], "add the scores to a copy"),
    ("kl_penalty", [kl_score_one_past], "the last real token is at mask.sum() - 1"),
    ("kl_penalty", [kl_score_everywhere], "not on every token"),
    ("kl_penalty", [kl_score_first], "the score goes on the LAST real token"),
    ("kl_penalty", [kl_coef_on_score], "kl_coef scales the penalty only"),
    ("gae", [gae_without_lambda], "you left out lambda"),
    ("gae", [gae_without_gamma], "you left out gamma"),
    ("gae", [gae_gamma_only_in_delta], "the recursion discounts too"),
    ("gae", [gae_gamma_only_in_recursion], "the next value is discounted too"),
    ("gae", [gae_pads_not_masked], "pads carry no reward and no value"),
    ("gae", [gae_returns_without_values], "returns = advantages + VALUES"),
    ("gae", [gae_returns_on_pads], "returns are 0 on pads"),
    ("gae", [gae_forwards], "work backwards from the last real token"),
    ("rollout_advantages", [knob(returns_from_whitened=True)], "returns come from the RAW advantages"),
    ("rollout_advantages", [knob(whiten=False)], "whiten the advantages"),
    ("rollout_advantages", [knob(zero_pads=False)], "pads get 0 after whitening"),
    ("rollout_advantages", [knob(per_row=True)], "not row by row"),
    ("rollout_advantages", [knob(keep_mean=True)], "advantages are whitened to mean 0"),
    ("rollout_advantages", [knob(whiten_rewards=False)], "cfg.whiten_rewards is True here"),
    ("rollout_advantages", [knob(rewards_keep_mean=False)], "reward whitening keeps the mean"),
    ("rollout_advantages", [knob(gamma=1.0, lam=0.95)], "pass cfg.gamma and cfg.lam"),
    ("rollout_advantages", [knob(third="rewards")], "the third result is the penalty"),
    ("ppo_losses", [policy_loss_without_clip, VALUE], "(you did not clip)"),
    ("ppo_losses", [policy_loss_min, VALUE], "you took the min"),
    ("ppo_losses", [policy_loss_no_exp, VALUE], "not their difference"),
    ("ppo_losses", [policy_loss_pads_included, VALUE], "pads hold junk ratios"),
    ("ppo_losses", [policy_loss_row_means, VALUE], "not the mean of each row's mean"),
    ("ppo_losses", [policy_loss_ratio_detached, VALUE], CUT),
    ("ppo_losses", [POLICY, value_loss_without_clip], "you clipped nothing, OR you clipped around the RETURNS"),
    ("ppo_losses", [POLICY, value_loss_clipped_around_returns], "OR you clipped around the RETURNS (R + clip(V - R))"),
    ("ppo_losses", [POLICY, value_loss_min], "keep the LARGER of the two errors"),
    ("ppo_losses", [POLICY, value_loss_without_half], "the loss is 0.5 times the mean"),
    ("ppo_losses", [POLICY, value_loss_clipped_only], "you used the clipped one alone"),
    ("ppo_losses", [POLICY, value_loss_pads_included], "pads hold junk values"),
    ("ppo_losses", [POLICY, value_loss_no_grad], CUT),
    ("adaptive_kl", [KL_WITHOUT_CLIP], "clip the error to [-0.2, 0.2]"),
    ("adaptive_kl", [KL_ABSOLUTE_ERROR], "the error is relative: KL / target - 1"),
    ("adaptive_kl", [KL_SIGN_FLIPPED], "a KL above the target must RAISE the coefficient"),
    ("adaptive_kl", [KL_WITHOUT_SCALE], "scale the step by n_answers / horizon"),
    ("adaptive_kl", [KL_ADDITIVE], "the update is multiplicative"),
    ("adaptive_kl", [KL_CLIP_AFTER_SCALE], "you clipped the product"),
    ("adaptive_kl", [KL_INVERTED], "you inverted the ratio"),
    ("adaptive_kl", [KL_FROM_THE_START], "the changes compound"),
    ("adaptive_kl", [KLControllerReturnsValue], "update must change self.value in place"),
    ("dpo_loss", [DPO, sequence_logprobs_mean], "not the mean"),
    ("dpo_loss", [DPO, sequence_logprobs_raw], "logits are not log-probabilities"),
    ("dpo_loss", [DPO, sequence_logprobs_unclamped], "raised RuntimeError on case 'sequence_logprobs: two rows"),
    ("dpo_loss", [DPO, sequence_logprobs_unclamped], "clamp them first"),
    ("dpo_loss", [DPO, sequence_logprobs_no_grad], CUT),
    ("dpo_loss", [DPO, sequence_logprobs_unmasked], "prompt and pad positions (mask 0) contribute nothing"),
    ("dpo_loss", [DPO, sequence_logprobs_shifted_again], "the targets are already aligned with the logits"),
    ("dpo_loss", [DPO, sequence_logprobs_log_of_softmax], "log(softmax(x)) underflows"),
    ("dpo_loss", [dpo_beta_outside, SEQUENCE], "beta goes INSIDE the sigmoid"),
    ("dpo_loss", [dpo_without_reference, SEQUENCE], "the loss reads log-RATIOS to the reference"),
    ("dpo_loss", [dpo_sign_flipped, SEQUENCE], "the sign: h = chosen log-ratio MINUS rejected log-ratio"),
    ("dpo_loss", [dpo_rewards_without_beta, SEQUENCE], "the implicit rewards are BETA times the log-ratio"),
    ("dpo_loss", [dpo_ipo_target_1_over_beta, SEQUENCE], "not 1 / beta"),
    ("dpo_loss", [dpo_conservative_swapped, SEQUENCE], "you swapped them"),
    ("dpo_loss", [dpo_log_of_sigmoid, SEQUENCE], "use F.logsigmoid"),
    ("dpo_loss", [dpo_mean, SEQUENCE], "one loss per pair, shape (B,)"),
    ("dpo_loss", [dpo_detached, SEQUENCE], "no gradient reaches policy_chosen"),
]

CORRECT = [  # (exercise, functions): other correct ways to write it
    ("render_chat", [render_chat_loop]), ("render_chat", [render_chat_segments]),
    ("masking", [collate_loop]), ("masking", [collate_pad_sequence]),
    ("sft_loss", [lm_loss_log_softmax]), ("sft_loss", [lm_loss_row_loop]),
    ("causal_mask", [causal_mask_loop]), ("causal_mask", [causal_mask_tril]),
    ("kv_cache_step", [KVCacheLists]),
    ("bradley_terry", [bt_softplus]), ("bradley_terry", [bt_relu_log1p]), ("bradley_terry", [bt_clamp_log1p]),
    ("bradley_terry", [bt_logaddexp]), ("bradley_terry", [bt_bce]), ("bradley_terry", [bt_loop]),
    ("response_logprobs", [response_logprobs_loop]), ("response_logprobs", [response_logprobs_cross_entropy]),
    ("kl_penalty", [kl_penalty_loop]),
    ("gae", [gae_python_loop]), ("gae", [gae_vectorised]),
    ("rollout_advantages", [advantages_written_out]), ("rollout_advantages", [knob()]),
    ("ppo_losses", [policy_loss_where, value_loss_loop]), ("ppo_losses", [policy_loss_objective, VALUE]),
    ("adaptive_kl", [KLControllerClamp]),
    ("dpo_loss", [dpo_loss_softplus, sequence_logprobs_cross_entropy]), ("dpo_loss", [DPO, sequence_logprobs_loop]),
]


SOLUTIONS = (RENDER, DATA, SFT, POLICY, VALUE, DPO, SEQUENCE)


def label(functions):  # the test's id: the name of the wrong (or variant) function
    return next((f.__name__ for f in functions if f not in SOLUTIONS), functions[0].__name__)


@pytest.mark.parametrize("name, functions, hint", WRONG,
                         ids=[f"{name}-{label(fns)}-{i}" for i, (name, fns, _) in enumerate(WRONG)])
def test_a_known_wrong_solution_fails_with_its_cause(name, functions, hint):
    status, message = checker.verdict(name, functions)
    assert status == "failing", message
    assert hint in message, message
    assert "Traceback" not in message


@pytest.mark.parametrize("name, functions", CORRECT,
                         ids=[f"{name}-{label(fns)}" for name, fns in CORRECT])
def test_a_correct_variant_passes(name, functions):
    status, message = checker.verdict(name, functions)
    assert status == "passed", message


def test_at_least_five_wrong_solutions_per_exercise():
    for name in CHECKS:
        assert len({tuple(fns) for n, fns, _ in WRONG if n == name}) >= 5, name
        assert any(n == name for n, _ in CORRECT), name


def test_the_gradient_check_says_what_it_compared():
    _, message = checker.verdict("bradley_terry", [bt_rejected_detached])
    assert "yours against reward.bradley_terry_loss's on the same inputs" in message
    assert "the gradient of sum(w * result), w = 1, 1.5, 2, ..." in message


def test_a_tie_does_not_fail_a_correct_stable_form():
    # relu(-x) + log1p(exp(-|x|)) is -log sigmoid(x), but autograd gives it gradient 0 at x = 0 (the true one
    # is -0.5): the checker's gradient cases keep away from ties, so this correct form passes
    x = torch.zeros(1, requires_grad=True)
    bt_relu_log1p(x, torch.zeros(1)).sum().backward()
    assert x.grad.item() == 0.0 and math.isclose(bt_relu_log1p(x, torch.zeros(1)).item(), math.log(2), rel_tol=1e-6)
    assert checker.verdict("bradley_terry", [bt_relu_log1p])[0] == "passed"
