"""
The checks behind every exercise: small, hand-computed cases, each failure explained.

A check takes the function(s) under test and raises ExerciseFailure with a message that says which
case failed, what was expected, what came back and the cause. The checker recognises the usual
mistakes by the numbers they give on a case (each mistake gives its own numbers) and names the cause;
where two mistakes give the same numbers, the hint names both. tests/test_exercises_solutions.py runs
every check on the project's own implementations (they must pass), on correct variants (they must
pass too) and on known-wrong ones (they must fail, with the right hint).

Every call of the function under test goes through `call`: an exception it raises becomes a
StudentError, which the runner prints as "your function X raised Y on case Z", never a traceback.
Where the function is differentiable, `check_gradient` compares its gradient with the solution's on
the same inputs, so a result cut from the autograd graph (.item(), torch.no_grad, .detach()) fails.
"""

import math
import os
import traceback
from types import SimpleNamespace

import torch

IGNORE_INDEX = -100  # the target value that carries no loss (model.IGNORE_INDEX)


class ExerciseFailure(AssertionError):
    """A check failed: the message says the case, what was expected, what came back and the cause."""


class StudentError(ExerciseFailure):
    """The function under test raised an exception on a case. Reported as such, without a traceback."""

    def __init__(self, name, case, error, hint=""):
        message = f"your function {name} raised {type(error).__name__} on case '{case}': {error}"
        where = _where(error)
        message += f"\n  raised at {where}" if where else ""
        super().__init__(message + (f"\n  hint: {hint}" if hint else ""))


def _where(error):
    """'file, line n: code' of the innermost frame outside torch and this file: where the error came from."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if os.path.abspath(frame.filename) != os.path.abspath(__file__)
              and f"{os.sep}torch{os.sep}" not in frame.filename]
    if not frames:
        return ""
    frame = frames[-1]
    try:
        path = os.path.relpath(frame.filename)
    except ValueError:  # another drive on Windows
        path = frame.filename
    return f"{path}, line {frame.lineno}: {frame.line}"


# The case being checked, for the runner's message when the checker itself cannot use a result.
last_case = {"name": ""}


def call(case, fn, *args, _name=None, _hint="", **kwargs):
    """fn(*args, **kwargs) on one case. An exception it raises becomes a StudentError naming the case;
    _hint says what usually causes an exception there. NotImplementedError (an untouched stub) passes."""
    last_case["name"] = case
    try:
        return fn(*args, **kwargs)
    except (NotImplementedError, ExerciseFailure):
        raise
    except Exception as error:
        raise StudentError(_name or getattr(fn, "__qualname__", repr(fn)), case, error, _hint) from error


def expect(ok, case, got, want, hint=""):
    if not ok:
        show = lambda x: round(x, 6) if isinstance(x, float) else x  # 0.34, not 0.33999999999999997
        message = f"{case}\n  expected: {show(want)}\n  got:      {show(got)}"
        raise ExerciseFailure(message + (f"\n  hint: {hint}" if hint else ""))


def close(got, want, tol=1e-4):
    """got has want's shape and values (within tol). Anything that is not a tensor of numbers: False."""
    try:
        want = torch.as_tensor(want, dtype=torch.float32)
        got = torch.as_tensor(got.detach() if torch.is_tensor(got) else got, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        return False
    return got.shape == want.shape and torch.allclose(got, want, atol=tol, rtol=0)


def diagnose(got, mistakes, otherwise):
    """The hint for a wrong result `got`: the cause of every known mistake whose numbers it matches,
    or the general rule `otherwise`. mistakes: [(what that mistake returns, its cause)]."""
    causes = [cause for value, cause in mistakes if close(got, value)]
    if len(causes) > 1:  # this case cannot tell them apart: say every cause that fits
        return "this result fits more than one mistake: " + " OR ".join(causes)
    return causes[0] if causes else otherwise


def num(t):  # a Python float of a 0-d tensor (or number), detached
    return float(torch.as_tensor(t.detach() if torch.is_tensor(t) else t))


def fmt(t):
    """A tensor as (nested) lists for messages: integers as they are, other numbers rounded to 4 places."""
    try:
        t = torch.as_tensor(t.detach() if torch.is_tensor(t) else t)
        if not t.is_floating_point():
            return t.tolist()
        return (t.double().round(decimals=4) + 0.0).tolist()  # + 0.0 turns -0.0 into 0.0
    except (TypeError, ValueError, RuntimeError):
        return repr(t)


def shape_of(t):
    return tuple(t.shape) if torch.is_tensor(t) else type(t).__name__


def tensor(case, got, shape, hint=""):
    """got itself, checked to be a tensor of the given shape; else a failure that says what came back."""
    expect(torch.is_tensor(got) and tuple(got.shape) == tuple(shape), case + ": the result's shape",
           shape_of(got), tuple(shape), hint or "see the exercise's docstring for the shapes")
    return got


def scalar(case, got):
    """got as a Python float: a single number (a 0-d tensor, or a float for a loss with no gradient check)."""
    ok = isinstance(got, (int, float)) or (torch.is_tensor(got) and got.numel() == 1)
    expect(ok, case + ": one number", shape_of(got), "a 0-d tensor",
           "a mean is one number for the whole batch, not one per row or token")
    return num(got)


def pair(case, got, what="a tuple of two"):
    expect(isinstance(got, (tuple, list)) and len(got) == 2, case + ": what comes back",
           type(got).__name__, what, "see the exercise's docstring for what to return")
    return got


# ----------------------------------------------------------------------------- gradients
NAN_GRADIENT = ("NaN or inf in your gradient: a form that overflows on one side (log(sigmoid(x)), torch.where of "
                "an overflowing branch: the branch not taken still gets a gradient, and inf * 0 = NaN). Use a "
                "form that is finite everywhere: F.logsigmoid, F.softplus, F.log_softmax")
CUT = ("your result carries no gradient: it was cut from the autograd graph (.item(), float(), a new "
       "torch.tensor(...) built from a result, .detach(), .numpy(), or a torch.no_grad() block), so "
       "training could not learn from it")


def weights_like(out):
    """Fixed weights 1, 1.5, 2, ... in out's shape: the gradient of sum(w * out) sees every element."""
    return (1 + 0.5 * torch.arange(out.numel(), dtype=out.dtype)).view(out.shape)


def gradients(case, out, leaves, names, who, weighted=True):
    """d sum(w * out) / d leaf for each leaf (w = 1 unless weighted); a failure if out has no gradient.
    who: the name of the function under test, for an exception in the backward pass through it."""
    expect(torch.is_tensor(out) and out.requires_grad, case, "a result without a gradient (no grad_fn)",
           "a result that autograd can differentiate", CUT)
    total = (out * weights_like(out)).sum() if weighted else out.sum()
    grads = call(case, torch.autograd.grad, total, leaves, allow_unused=True,
                 _name=f"{who} (in the backward pass)")
    return {name: torch.zeros_like(leaf) if g is None else g for name, leaf, g in zip(names, leaves, grads)}


def check_gradient(case, fn, solution, inputs, run):
    """Compare the gradient of fn's result with the solution's on the same inputs.

    inputs: {name: float tensor}, the inputs to differentiate by; run(f, **leaves) calls f on fresh leaf
    copies of them (plus whatever else the case needs) and returns the tensor to differentiate. Both
    sides differentiate sum(w * result) with the same fixed weights w = 1, 1.5, 2, ..., so every
    element's gradient counts. The inputs are chosen away from ties and kinks: there, correct forms may
    differ (autograd takes relu'(0) = 0 and d|x|/dx = 0 at 0, so relu(-x) + log1p(exp(-|x|)) has
    gradient 0 at x = 0 where the derivative of -log sigmoid(x) is -0.5).
    """
    where = f"{solution.__module__}.{solution.__qualname__}"
    results = []
    for f in (solution, fn):
        leaves = {name: x.detach().clone().requires_grad_(True) for name, x in inputs.items()}
        out = run(f, **leaves) if f is solution else call(case, run, f, _name=fn.__qualname__, **leaves)
        results.append(gradients(case, out, list(leaves.values()), list(leaves), fn.__qualname__))
    want, got = results
    for name in inputs:
        title = (f"{case}: the gradient with respect to {name}, yours against {where}'s on the same inputs "
                 f"(the gradient of sum(w * result), w = 1, 1.5, 2, ...)")
        g, w = got[name], want[name]
        if not torch.isfinite(g).all():
            hint = NAN_GRADIENT
        elif not g.any() and w.any():
            hint = (f"no gradient reaches {name}: the part of your computation that reads it was cut from "
                    "the graph (.detach(), .item(), torch.no_grad(), or a new tensor built from its values)")
        else:
            hint = ("the values passed, but the gradient differs: part of the computation is cut from the "
                    "graph, or a step replaces values without a gradient (.data, in-place writes into a "
                    "tensor that has none), or the formula is not the same function of the inputs")
        expect(w.shape == g.shape and torch.allclose(g, w, rtol=1e-3, atol=1e-5), title, fmt(g), fmt(w), hint)


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


# ---------------------------------------------------------------------------- Bradley-Terry (reward.bradley_terry_loss)
def check_bradley_terry(bradley_terry_loss):
    case = "-log sigmoid(r_chosen - r_rejected), per pair"
    chosen, rejected = torch.tensor([0.0, 1.0, -100.0, 2.0, 100.0]), torch.tensor([0.0, 0.0, 0.0, 0.5, 0.0])
    loss = call(case, bradley_terry_loss, chosen, rejected)
    # differences 0, 1, -100, 1.5, 100: log 2, log(1 + e^-1), 100 (large margin, wrong way), log(1 + e^-1.5), ~0
    want = [math.log(2), math.log(1 + math.exp(-1.0)), 100.0, math.log(1 + math.exp(-1.5)), 0.0]
    tensor(case, loss, (5,), "return one loss per pair, shape (B,): the caller takes the mean")
    hint = ("a loss of 100 for a difference of -100 needs a stable form: F.logsigmoid or F.softplus, not "
            "log(sigmoid(x)) or log(1 + exp(-x))" if not torch.isfinite(loss).all() else
            "the loss of a badly wrong pair saturates: an epsilon inside the log or a clamp caps it (and its "
            "gradient); F.logsigmoid needs neither" if torch.is_tensor(loss) and 1 < num(loss[2]) < 99 else
            diagnose(loss, [([math.log(2), math.log(1 + math.e), 0.0, math.log(1 + math.exp(1.5)), 100.0],
                             "the sign: the loss falls as r_chosen - r_rejected grows; yours is "
                             "-log sigmoid(r_rejected - r_chosen)")],
                     "equal scores give ln 2; the chosen answer must score higher for the loss to fall"))
    expect(close(loss, want, 1e-3), case, fmt(loss), fmt(want), hint)

    case = "the margin m: -log sigmoid(r_c - r_r - m), m = 1.0"
    loss = call(case, bradley_terry_loss, torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]), margin=1.0)
    want = [math.log(2), math.log(1 + math.exp(-2.0))]  # 1 - 0 - 1 = 0 and 3 - 0 - 1 = 2
    hint = diagnose(loss, [([math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(-4.0))], "SUBTRACT the margin: "
                            "a pair must win by m before its loss falls below ln 2"),
                           ([math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(-3.0))], "you ignored the margin")],
                    "-log sigmoid(r_chosen - r_rejected - margin)")
    expect(close(loss, want), case, fmt(loss), fmt(want), hint)

    case = "a margin per pair, shape (B,): m = 0.5, 2.0"
    loss = call(case, bradley_terry_loss, torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]),
                margin=torch.tensor([0.5, 2.0]))
    want = [math.log(1 + math.exp(-0.5)), math.log(1 + math.exp(-1.0))]  # 1 - 0.5 = 0.5 and 3 - 2 = 1
    expect(close(loss, want), case, fmt(loss), fmt(want), "pair b uses its own margin[b]: subtract the whole "
           "tensor elementwise")

    case = "gradient with respect to r_chosen: -sigmoid(r_rejected - r_chosen)"
    chosen = torch.tensor([1.0, -100.0, 2.0], requires_grad=True)
    loss = call(case, bradley_terry_loss, chosen, torch.tensor([0.0, 0.0, 0.5]))
    grad = gradients(case, loss, [chosen], ["chosen"], bradley_terry_loss.__qualname__, weighted=False)["chosen"]
    want = [-1 / (1 + math.e), -1.0, -1 / (1 + math.exp(1.5))]  # -sigmoid(-1), -sigmoid(100) = -1, -sigmoid(-1.5)
    expect(close(grad, want, 1e-3), case, fmt(grad), fmt(want),
           NAN_GRADIENT if not torch.isfinite(grad).all() else
           "a gradient of 0 where the pair is badly wrong: a saturating form; the derivative of -log sigmoid(x) "
           "tends to -1, not 0, as x -> -inf")

    import reward
    # away from ties (differences 0.2, -2.1, 2.75, -50, 39): at a tie, correct forms may get different subgradients
    inputs = {"chosen": torch.tensor([0.3, -1.2, 2.5, -40.0, 35.0]),
              "rejected": torch.tensor([0.1, 0.4, -0.5, 10.0, -5.0])}
    margin = torch.tensor([0.0, 0.5, 0.25, 0.0, 1.0])
    check_gradient("pairs of every kind, a margin each", bradley_terry_loss, reward.bradley_terry_loss, inputs,
                   lambda f, chosen, rejected: f(chosen, rejected, margin=margin))


# ------------------------------------------------------------------------ response logprobs (rollout.response_logprobs)
class FixedLogits:
    """A stand-in policy: a GPT's forward, (logits, loss), with logits fixed in advance for these ids."""

    def __init__(self, logits, ids):
        self.logits, self.ids = logits, ids

    def __call__(self, ids, targets=None, attention_mask=None, cache=None):
        expect(tuple(ids.shape) == tuple(self.ids.shape), "the policy's input", tuple(ids.shape),
               tuple(self.ids.shape), "run the policy on the whole rows, prompt and response: the response's "
               "logprobs need the prompt as context")
        expect(attention_mask is not None, "the policy's attention_mask", None, "the batch's attention_mask",
               "pass attention_mask=... by name: the model's second argument is targets" if targets is not None
               else "pass attention_mask: the prompts are left-padded, and the model takes positions from it")
        return self.logits, None


def rollout_batch():
    """ids, attention_mask (2, 5): prompts left-padded to P = 3 columns, then N = 2 response columns; row 1
    stopped after one token (a pad after it). logits (2, 5, 3) = log(w) + offset, so softmax = w / sum(w).

    Column P - 1 + t predicts response token t: columns 2 and 3 carry the answer's logprobs, column 4
    (after the last token) predicts nothing. Row 0: column 2 w = 1 2 1 and token 1: p = 2/4; column 3
    w = 1 1 2 and token 0: p = 1/4. Row 1: column 2 w = 1 1 2 and token 2: p = 2/4. The rest is junk.
    """
    ids = torch.tensor([[0, 1, 2, 1, 0], [1, 2, 2, 2, 0]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    log = lambda *w: torch.tensor(w).log()
    logits = torch.stack([torch.stack([log(3, 1, 1), log(1, 3, 4), log(1, 2, 1) + 4, log(1, 1, 2) - 3, log(4, 1, 3)]),
                          torch.stack([log(1, 5, 2), log(2, 2, 1), log(1, 1, 2) + 2, log(1, 3, 4) + 1, log(6, 1, 1)])])
    return ids, mask, logits


def check_response_logprobs(response_logprobs):
    ids, mask, logits = rollout_batch()
    P, valid = 3, mask[:, 3:].bool()  # only real response tokens are read; row 1's pad may hold anything

    def answer(case, logits, temperature):
        got = call(case, response_logprobs, FixedLogits(logits, ids), ids, mask, P, temperature)
        expect(isinstance(got, (tuple, list)) and len(got) == 2, case + ": what comes back", type(got).__name__,
               "(logprobs, entropy)", "return (logprobs, entropy) like the solution; entropy may be None")
        return tensor(case, got[0], (2, 2), "(B, N): one logprob per RESPONSE token, the prompt's are not returned")

    case = "temperature 1, logits not normalised"
    got = answer(case, logits, 1.0)
    want = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.5), 0.0]])
    lp = logits.log_softmax(-1)
    not_shifted = torch.stack([lp[0, 3:].gather(-1, ids[0, 3:, None]).squeeze(-1),
                               lp[1, 3:].gather(-1, ids[1, 3:, None]).squeeze(-1)])  # column P + t for token t
    raw = logits[:, 2:4].gather(-1, ids[:, 3:, None]).squeeze(-1)
    hint = diagnose(torch.where(valid, got, 0.0), [(torch.where(valid, not_shifted, 0.0),
                                                    "the logits at column t predict token t + 1: response token "
                                                    "t (column P + t) is scored by column P - 1 + t, and the "
                                                    "first by the prompt's last token"),
                                                   (torch.where(valid, raw, 0.0), "logits are not log-probabilities: "
                                                    "log_softmax first")],
                    "logits[:, P - 1:-1] score ids[:, P:]: log_softmax, then gather the response's tokens")
    expect(close(torch.where(valid, got, 0.0), want), case + " (row 1's pad is not compared)", fmt(got), fmt(want),
           hint)

    case = "temperature 0.5: softmax(logits / 0.5)"
    got = answer(case, logits, 0.5)
    # logits / 0.5 = 2 log(w) + 2c: softmax = w^2 / sum(w^2): 4/6, 1/6 for row 0, 4/6 for row 1
    want = torch.tensor([[math.log(4 / 6), math.log(1 / 6)], [math.log(4 / 6), 0.0]])
    hint = diagnose(torch.where(valid, got, 0.0), [([[math.log(0.5), math.log(0.25)], [math.log(0.5), 0.0]],
                                                    "divide the logits by the temperature: the rollout sampled "
                                                    "from softmax(logits / T), and the ratio must use the same"),
                                                   ([[2 * math.log(0.5), 2 * math.log(0.25)], [2 * math.log(0.5), 0.0]],
                                                    "divide the LOGITS by T, before log_softmax, not the logprobs")],
                    "log_softmax(logits / temperature)")
    expect(close(torch.where(valid, got, 0.0), want), case, fmt(got), fmt(want), hint)

    case = "large logits: 1000 for another token"
    big = logits.clone()
    big[0, 2] = torch.tensor([1000.0, 0.0, -1000.0])  # token 1 has log p = 0 - 1000
    got = answer(case, big, 1.0)
    expect(abs(num(got[0, 0]) + 1000.0) < 1e-2, case + ": row 0, token 0", num(got[0, 0]), -1000.0,
           "log(softmax(x)) underflows to log 0 = -inf: use F.log_softmax" if not math.isfinite(num(got[0, 0]))
           else "log_softmax(logits / T) at the sampled token")

    import rollout
    check_gradient("the first case's gradient", response_logprobs, rollout.response_logprobs, {"logits": logits},
                   lambda f, logits: torch.where(valid, f(FixedLogits(logits, ids), ids, mask, P, 1.0)[0], 0.0))


# ----------------------------------------------------------------------------- KL penalty (ppo.kl_penalty_rewards)
def check_kl_penalty(kl_penalty_rewards):
    case = "three rows of 3, 1 and 4 tokens, junk on the pads, kl_coef 0.1"
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, 3.0], [-1.0, 3.0, 3.0, 3.0], [-1.0, -1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, -9.0], [-2.0, -9.0, -9.0, -9.0], [-1.0, -1.0, -1.0, -2.0]])
    scores = torch.tensor([2.0, -1.0, 0.5])
    rewards, non_score = pair(case, call(case, kl_penalty_rewards, logprobs, ref_logprobs, scores, mask, kl_coef=0.1,
                                         _hint="an index error here: the last real token is at mask.sum() - 1, "
                                         "not mask.sum() (one past it, outside a full row)"),
                              "(rewards, non_score_rewards)")
    tensor(case, rewards, (3, 4))
    tensor(case, non_score, (3, 4))
    # log-ratios 0.5, -1, 0 | 1 | 0, 0, 0, 1; times -0.1
    want = [[-0.05, 0.1, 0, 0], [-0.1, 0, 0, 0], [0, 0, 0, -0.1]]
    with_scores = [[-0.05, 0.1, 2.0, 0], [-1.1, 0, 0, 0], [0, 0, 0, 0.4]]
    hint = diagnose(non_score, [([[-0.05, 0.1, 0, -1.2], [-0.1, -1.2, -1.2, -1.2], [0, 0, 0, -0.1]],
                                 "pads must carry no penalty: multiply by response_mask (the logprobs at pads "
                                 "are junk)"),
                                ([[0.05, -0.1, 0, 0], [0.1, 0, 0, 0], [0, 0, 0, 0.1]], "the sign: a token the "
                                 "policy likes MORE than the reference (logp > ref_logp) is penalised"),
                                ([[-0.5, 1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 0, -1.0]], "multiply by kl_coef"),
                                (with_scores, "non_score_rewards is the penalty alone: add the scores to a copy "
                                 "(clone), not in place")],
                    "per token -kl_coef * (logprobs - ref_logprobs), 0 on pads")
    expect(close(non_score, want), case + ": non_score_rewards, -kl_coef * (logp - ref_logp), 0 on pads",
           fmt(non_score), want, hint)
    hint = diagnose(rewards, [([[-0.05, 0.1, 0, 2.0], [-0.1, 0, 0, -1.0], [0, 0, 0, 0.4]],
                               "the score goes on the last REAL token of each row; you put it on the last column, "
                               "a pad"),
                              ([[-0.05, 0.1, 0, 2.0], [-0.1, -1.0, 0, 0], [0, 0, 0, 0.4]],
                               "the last real token is at mask.sum() - 1; mask.sum() is the first pad"),
                              ([[1.95, 0.1, 0, 0], [-1.1, 0, 0, 0], [0.5, 0, 0, -0.1]],
                               "the score goes on the LAST real token: the reward model scores the whole answer"),
                              ([[1.95, 2.1, 2.0, 0], [-1.1, 0, 0, 0], [0.5, 0.5, 0.5, 0.4]],
                               "the score is added once, on the last real token, not on every token"),
                              ([[-0.05, 0.1, 0.2, 0], [-0.2, 0, 0, 0], [0, 0, 0, -0.05]],
                               "kl_coef scales the penalty only, not the score")],
                    "rewards = the penalty, plus the score on the last real token")
    expect(close(rewards, with_scores), case + ": rewards, the penalty plus the score at the end of each answer",
           fmt(rewards), with_scores, hint)

    case = "large log-ratios, kl_coef 0.5"
    rewards, _ = pair(case, call(case, kl_penalty_rewards, torch.tensor([[-0.1, -20.0, 4.0]]),
                                 torch.tensor([[-10.1, 0.0, 0.0]]), torch.tensor([1.0]),
                                 torch.tensor([[1.0, 1.0, 0.0]]), kl_coef=0.5), "(rewards, non_score_rewards)")
    want = [[-5.0, 11.0, 0.0]]  # -0.5 * 10 = -5; -0.5 * -20 = 10, plus the score 1; the pad: 0
    expect(close(rewards, want), case, fmt(rewards), want, "-kl_coef * (logp - ref_logp) on each real token, the "
           "score on the last real one, 0 on the pad")


# ----------------------------------------------------------------------------- GAE (ppo.gae)
def check_gae(gae):
    # row 0: three response tokens and a pad; row 1: one token and three pads; row 2: four tokens (junk on pads)
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0], [0.5, 9.0, 9.0, 9.0], [0.2, -0.1, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4, 5.0], [0.1, 3.0, 3.0, 3.0], [0.3, 0.1, 0.2, 0.4]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])

    def run(case, gamma, lam):
        got = pair(case, call(case, gae, rewards, values, mask, gamma=gamma, lam=lam), "(advantages, returns)")
        return tensor(case, got[0], (3, 4)), tensor(case, got[1], (3, 4))

    def pads_leak(advantages, want):  # the padded rows wrong, the full row right: pads leak into the recursion
        return close(advantages[2], want[2]) and not close(advantages[:2], want[:2])

    case = "gamma=1, lam=0.95, a padded batch"
    advantages, returns = run(case, 1.0, 0.95)
    # row 0: delta_2 = 1 + 0 - 0.4 = 0.6 (nothing after the last token); delta_1 = 0 + 0.4 - 0.2 = 0.2;
    # delta_0 = 0 + 0.2 - 0.5 = -0.3. A_2 = 0.6, A_1 = 0.2 + 0.95 * 0.6 = 0.77, A_0 = -0.3 + 0.95 * 0.77 = 0.4315.
    # row 1: A_0 = 0.5 - 0.1 = 0.4. row 2: deltas 0.2 + 0.1 - 0.3 = 0, -0.1 + 0.2 - 0.1 = 0, 0 + 0.4 - 0.2 = 0.2,
    # 1 - 0.4 = 0.6; A_3 = 0.6, A_2 = 0.2 + 0.57 = 0.77, A_1 = 0.7315, A_0 = 0.694925
    want = [[0.4315, 0.77, 0.6, 0.0], [0.4, 0, 0, 0], [0.694925, 0.7315, 0.77, 0.6]]
    no_lambda = [[0.5, 0.8, 0.6, 0.0], [0.4, 0, 0, 0], [0.8, 0.8, 0.8, 0.6]]
    hint = ("the padded rows are wrong and the full row is right: pads carry no reward and no value; the value "
            "after the last real token is 0, not the pad's" if pads_leak(advantages, want) else
            diagnose(advantages, [(no_lambda, "A_t = delta_t + gamma * LAMBDA * A_{t+1}: you left out lambda")],
                     "work backwards from the last real token; the value after it is 0 and pads carry nothing"))
    expect(close(advantages, want), case + ": advantages", fmt(advantages), want, hint)
    want_returns = [[0.9315, 0.97, 1.0, 0.0], [0.5, 0, 0, 0], [0.994925, 0.8315, 0.97, 1.0]]
    hint = diagnose(returns, [(want, "returns = advantages + VALUES: the critic's targets"),
                              ([[0.9315, 0.97, 1.0, 5.0], [0.5, 3, 3, 3], [0.994925, 0.8315, 0.97, 1.0]],
                               "returns are 0 on pads: add the values there only where the mask is 1")],
                    "returns = advantages + values, 0 on pads")
    expect(close(returns, want_returns), case + ": returns = advantages + values (0 on pads)", fmt(returns),
           want_returns, hint)

    case = "gamma=0.9, lam=0.8: both discount"
    advantages, returns = run(case, 0.9, 0.8)
    # gamma * lam = 0.72. row 0: delta_2 = 1 - 0.4 = 0.6, delta_1 = 0 + 0.9 * 0.4 - 0.2 = 0.16,
    # delta_0 = 0 + 0.9 * 0.2 - 0.5 = -0.32; A_2 = 0.6, A_1 = 0.16 + 0.72 * 0.6 = 0.592, A_0 = -0.32 + 0.72 * 0.592
    # = 0.10624. row 1: 0.4. row 2: deltas -0.01, -0.02, 0.16, 0.6: A_3 = 0.6, A_2 = 0.592,
    # A_1 = -0.02 + 0.72 * 0.592 = 0.40624, A_0 = -0.01 + 0.72 * 0.40624 = 0.2824928
    want = [[0.10624, 0.592, 0.6, 0.0], [0.4, 0, 0, 0], [0.2824928, 0.40624, 0.592, 0.6]]
    # gamma = 1 everywhere: deltas -0.3, 0.2, 0.6 | 0, 0, 0.2, 0.6, and A_t = delta_t + 0.8 A_{t+1}
    no_gamma = [[0.244, 0.68, 0.6, 0.0], [0.4, 0, 0, 0], [0.4352, 0.544, 0.68, 0.6]]
    # gamma in delta only: deltas -0.32, 0.16, 0.6 | -0.01, -0.02, 0.16, 0.6 and A_t = delta_t + 0.8 A_{t+1}
    gamma_only_in_delta = [[0.192, 0.64, 0.6, 0.0], [0.4, 0, 0, 0], [0.3836, 0.492, 0.64, 0.6]]
    # gamma in the recursion only: deltas -0.3, 0.2, 0.6 | 0, 0, 0.2, 0.6 and A_t = delta_t + 0.72 A_{t+1}
    gamma_only_in_recursion = [[0.15504, 0.632, 0.6, 0.0], [0.4, 0, 0, 0], [0.3276288, 0.45504, 0.632, 0.6]]
    hint = ("the padded rows are wrong and the full row is right: pads carry no reward and no value; the value "
            "after the last real token is 0, not the pad's" if pads_leak(advantages, want) else
            diagnose(advantages, [(no_gamma, "you left out gamma: delta_t = r_t + GAMMA * V_{t+1} - V_t and "
                                   "A_t = delta_t + GAMMA * lam * A_{t+1}"),
                                  (gamma_only_in_delta, "A_t = delta_t + GAMMA * lam * A_{t+1}: the recursion "
                                   "discounts too"),
                                  (gamma_only_in_recursion, "delta_t = r_t + GAMMA * V_{t+1} - V_t: the next "
                                   "value is discounted too")],
                     "delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}"))
    expect(close(advantages, want), case + ": advantages", fmt(advantages), want, hint)

    case = "gamma=1, lam=1: the return is the sum of the rewards still to come"
    _, returns = run(case, 1.0, 1.0)
    want = [[1.0, 1.0, 1.0, 0.0], [0.5, 0, 0, 0], [1.1, 0.9, 1.0, 1.0]]
    expect(close(returns, want), case, fmt(returns), want, "with lam = 1 the values cancel: R_t = r_t + ... + r_T")


# ------------------------------------------------------------------- rollout -> advantages (ppo.rewards_and_advantages)
def check_rollout_advantages(rewards_and_advantages):
    def rollout(log_ratio_row0, log_ratio_row1, scores, values, mask):
        """A batch as rollout() returns it: logprobs - ref_logprobs are the given log-ratios."""
        ref = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]])
        return {"logprobs": ref + torch.tensor([log_ratio_row0, log_ratio_row1]), "ref_logprobs": ref,
                "scores": torch.tensor(scores), "values": torch.tensor(values), "response_mask": torch.tensor(mask)}

    def run(case, batch, kl_coef, **cfg):
        got = call(case, rewards_and_advantages, batch, kl_coef, SimpleNamespace(**cfg))
        expect(isinstance(got, (tuple, list)) and len(got) == 3, case + ": what comes back", type(got).__name__,
               "(advantages, returns, non_score_rewards)")
        return [tensor(case, t, (2, 3)) for t in got]

    # rows of 3 and 2 tokens; the pad of row 1 holds junk (log-ratio 14, value 9)
    batch = rollout([0.0, 2.0, 0.0], [1.0, 0.0, 14.0], [2.0, 1.0], [[0.5, 0.5, 0.5], [0.0, 0.5, 9.0]],
                    [[1.0, 1, 1], [1, 1, 0]])
    case = "kl_coef 0.5, gamma = lam = 1, no reward whitening"
    advantages, returns, non_score = run(case, batch, 0.5, gamma=1.0, lam=1.0, whiten_rewards=False)
    # penalty -0.5 * log-ratio: [0, -1, 0], [-0.5, 0, pad 0]; the scores on the last real tokens make
    # the rewards [0, -1, 2], [-0.5, 1]
    want = [[0.0, -1.0, 0.0], [-0.5, 0.0, 0.0]]
    expect(close(non_score, want), case + ": non_score_rewards, the KL penalty alone", fmt(non_score), want,
           "the third result is the penalty -kl_coef * (logp - ref_logp), before any whitening and without the "
           "score: kl_penalty_rewards' second result")
    # gamma = lam = 1: returns are rewards still to come: [1, 1, 2], [0.5, 1]; raw advantages = returns - values
    want_returns = [[1.0, 1.0, 2.0], [0.5, 1.0, 0.0]]
    # raw advantages [0.5, 0.5, 1.5], [0.5, 0.5]: mean 3.5 / 5 = 0.7, deviations -0.2 -0.2 0.8 -0.2 -0.2,
    # variance 0.8 / 5 = 0.16 (std 0.4): whitened -0.5, -0.5, 2, -0.5, -0.5. With the unbiased variance
    # 0.8 / 4 = 0.2 (TRL's masked_var): -0.4472, ..., 1.7889; both pass
    want = [[-0.5, -0.5, 2.0], [-0.5, -0.5, 0.0]]
    unbiased = [[-0.447214, -0.447214, 1.788854], [-0.447214, -0.447214, 0.0]]
    # GAE's default lam = 0.95 instead of cfg.lam = 1: row 0 A = 0.40375, 0.425, 1.5; row 1 A = 0.475, 0.5
    hint = diagnose(returns, [([[0.0, 0.0, 2.5], [-0.5, 0.0, 0.0]], "returns come from the RAW advantages (GAE's "
                               "advantages + values): whitening is for the policy loss only; the critic must "
                               "learn the real scale"),
                              ([[0.90375, 0.925, 2.0], [0.475, 1.0, 0.0]], "pass cfg.gamma and cfg.lam to GAE, not "
                               "its defaults (lam = 0.95)")],
                    "returns = GAE's returns, from the rewards (KL penalty + score) and the values")
    expect(close(returns, want_returns), case + ": returns", fmt(returns), want_returns, hint)
    hint = diagnose(advantages, [([[0.5, 0.5, 1.5], [0.5, 0.5, 0.0]], "whiten the advantages: (A - mean) / std "
                                  "over the valid tokens"),
                                 ([[-0.5, -0.5, 2.0], [-0.5, -0.5, -1.75]], "pads get 0 after whitening: multiply "
                                  "by response_mask (masked_whiten does)"),
                                 ([[-0.707107, -0.707107, 1.414214], [0.0, 0.0, 0.0]], "whiten over the whole "
                                  "batch, not row by row"),
                                 ([[0.2, 0.2, 2.7], [0.2, 0.2, 0.0]], "advantages are whitened to mean 0 "
                                  "(shift_mean=True); only the reward whitening keeps the mean")],
                    "advantages: GAE's, then (A - mean) / std with the mean and variance over the VALID tokens of "
                    "the batch (pads 0 before and after)")
    expect(close(advantages, want) or close(advantages, unbiased), case + ": whitened advantages", fmt(advantages),
           want, hint)

    # rows of 3 and 1 tokens. kl_coef 1: penalties [-1.5, 2.5, 0], [-0.5]; scores 2.5 and -1: rewards
    # [-1.5, 2.5, 2.5], [-1.5]: mean 0.5, deviations -2 2 2 -2, variance 4, std 2
    batch = rollout([1.5, -2.5, 0.0], [0.5, 3.0, 3.0], [2.5, -1.0], [[0.5, 1.0, 0.5], [0.5, 9.0, 9.0]],
                    [[1.0, 1, 1], [1, 0, 0]])
    case = "whiten_rewards=True: the rewards scaled to std 1, their mean kept"
    advantages, returns, _ = run(case, batch, 1.0, gamma=1.0, lam=1.0, whiten_rewards=True)
    # whitened with the mean kept: (r - 0.5) / 2 + 0.5 = [-0.5, 1.5, 1.5], [-0.5]; rewards to come:
    # [2.5, 3.0, 1.5], [-0.5]. With the unbiased variance 16 / 3 (std 2.3094): +-2 / 2.3094 = +-0.8660 around 0.5
    want_returns = [[2.5, 3.0, 1.5], [-0.5, 0.0, 0.0]]
    unbiased = [[2.366025, 2.732051, 1.366025], [-0.366025, 0.0, 0.0]]
    hint = diagnose(returns, [([[3.5, 5.0, 2.5], [-1.5, 0.0, 0.0]], "cfg.whiten_rewards is True here: scale the "
                               "rewards (masked_whiten with shift_mean=False) before GAE"),
                              ([[1.0, 2.0, 1.0], [-1.0, 0.0, 0.0]], "reward whitening keeps the mean "
                               "(shift_mean=False): only the scale changes, so the score keeps its sign")],
                    "whiten the rewards over the valid tokens, keeping their mean, then GAE")
    expect(close(returns, want_returns) or close(returns, unbiased), case + ": returns", fmt(returns), want_returns,
           hint)
    whitened(case, advantages, batch["response_mask"])

    case = "cfg.gamma = cfg.lam = 0.5"
    batch = rollout([0.0, 2.0, 0.0], [1.0, 0.0, 14.0], [2.0, 1.0], [[0.5, 0.5, 0.5], [0.0, 0.5, 9.0]],
                    [[1.0, 1, 1], [1, 1, 0]])
    advantages, returns, _ = run(case, batch, 0.5, gamma=0.5, lam=0.5, whiten_rewards=False)
    # rewards [0, -1, 2], [-0.5, 1]; gamma * lam = 0.25. row 0: delta_2 = 2 - 0.5 = 1.5,
    # delta_1 = -1 + 0.5 * 0.5 - 0.5 = -1.25, delta_0 = 0 + 0.25 - 0.5 = -0.25; A = -0.46875, -0.875, 1.5.
    # row 1: delta_1 = 1 - 0.5 = 0.5, delta_0 = -0.5 + 0.25 - 0 = -0.25; A = -0.125, 0.5. returns = A + values
    want_returns = [[0.03125, -0.375, 2.0], [-0.125, 1.0, 0.0]]
    expect(close(returns, want_returns), case + ": returns", fmt(returns), want_returns,
           "pass cfg.gamma and cfg.lam to GAE (not its defaults)")
    whitened(case, advantages, batch["response_mask"])


def whitened(case, advantages, mask):
    """Advantages of mean 0 and variance 1 over the valid tokens (n / (n - 1) less with the unbiased
    estimate of the std), 0 on pads."""
    valid = mask.bool()
    mean, var = num(advantages[valid].mean()), num(advantages[valid].var(unbiased=False))
    n = int(valid.sum())
    expect(abs(mean) < 1e-4 and (abs(var - 1) < 1e-3 or abs(var - (n - 1) / n) < 1e-3) and not advantages[~valid].any(),
           case + ": advantages have mean 0 and variance 1 over the valid tokens, 0 on pads",
           f"mean {mean:.4f}, variance {var:.4f}, pads {fmt(advantages[~valid])}", "mean 0, variance 1, pads 0",
           "(A - mean) / std over the valid tokens of the whole batch, then 0 on pads")


# ------------------------------------------------------------------------- PPO losses (ppo.policy_loss, ppo.value_loss)
def check_ppo_losses(policy_loss, value_loss):
    import ppo
    check_policy_loss(policy_loss, ppo.policy_loss)
    check_value_loss(value_loss, ppo.value_loss)


def check_policy_loss(policy_loss, solution):
    case = "policy loss, eps=0.2, one row"
    old = torch.zeros(1, 4)
    logprobs = torch.tensor([[1.5, 0.5, 1.1, 10.0]]).log().requires_grad_(True)  # ratios 1.5, 0.5, 1.1; a pad
    advantages = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1, 1, 0]])
    loss, _ = pair(case, call(case, policy_loss, logprobs, old, advantages, mask, cliprange=0.2), "(loss, stats)")
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5; token 2: max(1.1, 1.1) = 1.1
    want = (-1.2 - 0.5 + 1.1) / 3
    log_ratio = logprobs.detach() - old
    no_exp = torch.max(-advantages * log_ratio, -advantages * log_ratio.clamp(0.8, 1.2))[:, :3].mean()
    hint = diagnose(scalar(case, loss), [((-1.5 - 0.5 + 1.1) / 3, "token 0 has ratio 1.5 > 1 + eps and A > 0: the "
                                          "clipped term -A * clip(ratio) must win (you did not clip)"),
                                         ((-1.5 - 0.8 + 1.1) / 3, "the loss is the MAX of -A * ratio and -A * "
                                          "clip(ratio) (the pessimistic bound); you took the min"),
                                         # the pad: ratio 10, A 5: max(-50, -6) = -6
                                         ((-1.2 - 0.5 + 1.1 - 6.0) / 4, "average over valid tokens only: pads hold "
                                          "junk ratios and advantages"),
                                         ((-1.2 - 0.5 + 1.1) / 4, "average over valid tokens only: divide by their "
                                          "number, not by B * T"),
                                         (num(no_exp), "ratio = exp(logprobs - old_logprobs), not their difference")],
                    "loss = mean over valid tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)); "
                    "ratio = exp(logp - old_logp)")
    expect(abs(num(loss) - want) < 1e-4, case, num(loss), want, hint)
    grad = gradients(case, loss, [logprobs], ["logprobs"], policy_loss.__qualname__)["logprobs"]
    want = [[0.0, -0.5 / 3, 1.1 / 3, 0.0]]  # d(-A ratio)/d logp = -A ratio / n; the clipped token and the pad: 0
    expect(close(grad, want), case + ": gradient, a clipped token and a pad get none", fmt(grad), fmt(want),
           "the clipped term has no gradient: clamp the ratio (a constant at the bound), do not clip the loss")

    case = "policy loss, two rows of 3 and 2 tokens, negative advantages, old logprobs not 0"
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [-2.0, -2.0, -2.0, -2.0]])
    ratios = torch.tensor([[1.5, 0.5, 1.1, 10.0], [0.5, 1.5, 3.0, 3.0]])
    logprobs = old + ratios.log()
    advantages = torch.tensor([[1.0, 1.0, -1.0, 5.0], [-1.0, -1.0, 2.0, 2.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    loss, _ = pair(case, call(case, policy_loss, logprobs, old, advantages, mask, cliprange=0.2), "(loss, stats)")
    # row 0 as above: -1.2, -0.5, 1.1. row 1: ratio 0.5 with A = -1: max(0.5, 0.8) = 0.8 (clipped);
    # ratio 1.5 with A = -1: max(1.5, 1.2) = 1.5 (unclipped wins). Mean over the 5 valid tokens: 1.7 / 5
    want = (-1.2 - 0.5 + 1.1 + 0.8 + 1.5) / 5
    log_ratio = ratios.log()
    no_exp = torch.max(-advantages * log_ratio, -advantages * log_ratio.clamp(0.8, 1.2))
    hint = diagnose(scalar(case, loss), [((-0.6 / 3 + 2.3 / 2) / 2, "average over every valid token of the batch, "
                                          "not the mean of each row's mean"),
                                         ((-1.5 - 0.5 + 1.1 + 0.5 + 1.5) / 5, "you did not clip: with A < 0 a "
                                          "ratio below 1 - eps is clipped (row 1, token 0)"),
                                         ((-1.5 - 0.8 + 1.1 + 0.5 + 1.2) / 5, "the loss is the MAX of the two "
                                          "terms (the pessimistic bound); you took the min"),
                                         ((1.7 - 6.0 - 2.4 - 2.4) / 8, "average over valid tokens only: pads hold "
                                          "junk ratios and advantages"),
                                         (1.7 / 8, "average over valid tokens only: divide by their number, not "
                                          "by B * T"),
                                         (num((no_exp * mask).sum() / 5), "ratio = exp(logprobs - old_logprobs), "
                                          "not their difference")],
                    "loss = mean over valid tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))")
    expect(abs(num(loss) - want) < 1e-4, case, num(loss), want, hint)
    check_gradient(case, policy_loss, solution, {"logprobs": logprobs},
                   lambda f, logprobs: f(logprobs, old, advantages, mask, cliprange=0.2)[0])


def check_value_loss(value_loss, solution):
    around_returns = ("you clipped nothing, OR you clipped around the RETURNS (R + clip(V - R)): that error is "
                      "never the larger one, so nothing changes. Clip around the OLD values: "
                      "V_old + clip(V - V_old, -eps, eps), and keep the larger of the two errors")
    case = "value loss, eps=0.2, old values 0"
    values = torch.tensor([[0.5, -0.1, 0.3, 42.0]])
    returns = torch.tensor([[1.0, 1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0]])
    loss, _ = pair(case, call(case, value_loss, values, torch.zeros(1, 4), returns, mask, cliprange_value=0.2),
                   "(loss, clipfrac)")
    # token 0: clipped value 0.2: max(0.25, 0.64) = 0.64; token 1: 1.21; token 2: max(1.69, 1.44) = 1.69
    want = 0.5 * (0.64 + 1.21 + 1.69) / 3
    hint = diagnose(scalar(case, loss), [(0.5 * (0.25 + 1.21 + 1.69) / 3, around_returns),
                                         (0.5 * (0.25 + 1.21 + 1.44) / 3, "keep the LARGER of the two errors "
                                          "(max), not the smaller"),
                                         (0.5 * (0.64 + 1.21 + 1.44) / 3, "the loss is the max of the clipped AND "
                                          "the unclipped error; you used the clipped one alone"),
                                         ((0.64 + 1.21 + 1.69) / 3, "the loss is 0.5 times the mean"),
                                         # the pad: V = 42, R = 0: max(42^2, 0.2^2)
                                         (0.5 * (0.64 + 1.21 + 1.69 + 42 ** 2) / 4, "average over valid tokens only: "
                                          "pads hold junk values"),
                                         (0.5 * (0.64 + 1.21 + 1.69) / 4, "average over valid tokens only: divide "
                                          "by their number, not by B * T")],
                    "loss = 0.5 * mean of max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2) over valid "
                    "tokens")
    expect(abs(num(loss) - want) < 1e-4, case, num(loss), want, hint)

    case = "value loss, two rows, old values not 0"
    values = torch.tensor([[0.5, -0.1, 0.3, 42.0], [1.0, 0.0, 7.0, 7.0]])
    old_values = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.6, 0.1, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, -1.0, 0.0], [2.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    loss, _ = pair(case, call(case, value_loss, values, old_values, returns, mask, cliprange_value=0.2),
                   "(loss, clipfrac)")
    # row 0 as above: 0.64, 1.21, 1.69. row 1, token 0: V moved 0.4 from 0.6, clipped to 0.8:
    # max((1 - 2)^2, (0.8 - 2)^2) = 1.44; token 1: moved -0.1, within the clip: (0 + 1)^2 = 1
    want = 0.5 * (0.64 + 1.21 + 1.69 + 1.44 + 1.0) / 5
    hint = diagnose(scalar(case, loss), [(0.5 * (0.25 + 1.21 + 1.69 + 1.0 + 1.0) / 5, around_returns),
                                         (0.5 * (0.25 + 1.21 + 1.44 + 1.0 + 1.0) / 5, "keep the LARGER of the two "
                                          "errors (max), not the smaller"),
                                         (0.5 * (0.64 + 1.21 + 1.44 + 1.44 + 1.0) / 5, "the loss is the max of the "
                                          "clipped AND the unclipped error; you used the clipped one alone"),
                                         ((0.64 + 1.21 + 1.69 + 1.44 + 1.0) / 5, "the loss is 0.5 times the mean"),
                                         # the pads: max(42^2, 0.2^2) and twice max(7^2, 0.2^2)
                                         (0.5 * (0.64 + 1.21 + 1.69 + 42 ** 2 + 1.44 + 1.0 + 7 ** 2 * 2) / 8,
                                          "average over valid tokens only: pads hold junk values"),
                                         (0.5 * (0.64 + 1.21 + 1.69 + 1.44 + 1.0) / 8, "average over valid tokens "
                                          "only: divide by their number, not by B * T")],
                    "loss = 0.5 * mean of max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2) over valid "
                    "tokens")
    expect(abs(num(loss) - want) < 1e-4, case, num(loss), want, hint)
    check_gradient(case, value_loss, solution, {"values": values},
                   lambda f, values: f(values, old_values, returns, mask, cliprange_value=0.2)[0])


# ---------------------------------------------------------------- the adaptive KL controller (ppo.AdaptiveKLController)
def check_adaptive_kl(AdaptiveKLController):
    def after(case, kl_coef, target, horizon, updates):
        controller = call(case, AdaptiveKLController, kl_coef, target, horizon)
        expect(getattr(controller, "value", None) == kl_coef, case + ": .value before any update",
               getattr(controller, "value", "missing"), kl_coef,
               "store the coefficient in .value: PPO reads kl_ctl.value")
        for kl, n in updates:
            call(case, controller.update, kl, n, _name=f"{AdaptiveKLController.__name__}.update")
        return controller.value

    def update(case, kl, n, want, mistakes):
        got = after(case, 0.5, 2.0, 100, [(kl, n)])
        expect(isinstance(got, (int, float)) or torch.is_tensor(got), case + ": .value", type(got).__name__,
               "a number")
        mistakes = mistakes + [(0.5, "update must change self.value in place: PPO reads kl_ctl.value after it")]
        expect(abs(num(got) - want) < 1e-6, case, num(got), want,
               diagnose(num(got), mistakes,
                        "error = clip(KL / target - 1, -0.2, 0.2); value *= 1 + error * n / horizon"))

    # kl_coef 0.5, target 2, horizon 100 in every case; e = clip(KL / target - 1, -0.2, 0.2)
    # KL 2.3: e = 0.15, value = 0.5 * (1 + 0.15 * 10 / 100) = 0.5075
    update("KL 2.3 above the target 2, 10 answers", 2.3, 10, 0.5075,
           [(0.5 * (1 - 0.015), "the sign: a KL above the target must RAISE the coefficient (a tighter leash)"),
            (0.5 * 1.02, "the error is relative: KL / target - 1, not KL - target"),
            (0.5 * 1.15, "scale the step by n_answers / horizon: the horizon is how many answers a 20% change takes"),
            (0.5 + 0.015, "the update is multiplicative: value *= 1 + error * n / horizon"),
            (0.5 * (1 + (2 / 2.3 - 1) * 0.1), "the error is KL / target - 1: you inverted the ratio")])
    # KL 10: e = 4 clipped to 0.2: 0.5 * 1.02 = 0.51
    update("KL 10, far above the target", 10.0, 10, 0.51,
           [(0.5 * 1.4, "clip the error to [-0.2, 0.2]: one bad batch must not move the coefficient much"),
            (0.5 * 1.2, "clip the error itself, then scale by n / horizon (you clipped the product)")])
    # KL 0: e = -1 clipped to -0.2: 0.5 * 0.98 = 0.49
    update("KL 0, far below the target", 0.0, 10, 0.49,
           [(0.5 * 0.9, "clip the error to [-0.2, 0.2]: one batch must not move the coefficient much"),
            (0.5 * 1.02, "the sign: a KL below the target must LOWER the coefficient")])
    # KL 1.8: e = -0.1; 50 answers: 0.5 * (1 - 0.1 * 0.5) = 0.475
    update("KL 1.8 below the target, 50 answers", 1.8, 50, 0.475,
           [(0.5 * 0.9, "the error is relative: KL / target - 1, not KL - target")])
    case = "two updates compound: kl_coef 0.5, target 1, horizon 10"
    # KL 1.5: e = 0.5 -> 0.2, 0.5 * (1 + 0.2 * 5 / 10) = 0.55; then KL 1.1: e = 0.1, 0.55 * (1 + 0.05) = 0.5775
    got = num(after(case, 0.5, 1.0, 10, [(1.5, 5), (1.1, 5)]))
    expect(abs(got - 0.5775) < 1e-6, case, got, 0.5775,
           diagnose(got, [(0.5 * 1.05, "each update starts from the CURRENT value: the changes compound")],
                    "value *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon, once per update"))


# ---------------------------------------------------------------------------- DPO (dpo.dpo_loss, dpo.sequence_logprobs)
def dpo_batch():
    """logits (2, 4, 3) = log(w) + offset (not normalised), targets with IGNORE_INDEX outside the answers.

    Row 0: the answer at positions 1 and 2: w = 1 2 1 with token 1 (p = 1/2), w = 1 1 2 with token 2
    (p = 1/2). Row 1: the answer at positions 2 and 3: w = 2 1 1 with token 0 (p = 1/2), w = 1 1 2 with
    token 0 (p = 1/4). The other positions hold junk.
    """
    log = lambda *w: torch.tensor(w).log()
    logits = torch.stack([torch.stack([log(1, 4, 1), log(1, 2, 1) + 3.0, log(1, 1, 2) - 1.0, log(5, 1, 1)]),
                          torch.stack([log(3, 1, 1), log(1, 1, 6) + 2.0, log(2, 1, 1) + 5.0, log(1, 1, 2) - 4.0])])
    targets = torch.tensor([[IGNORE_INDEX, 1, 2, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 0, 0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    return logits, targets, mask


def check_dpo_loss(dpo_loss, sequence_logprobs):
    import dpo
    check_sequence_logprobs(sequence_logprobs, dpo.sequence_logprobs)
    check_dpo_values(dpo_loss, dpo.dpo_loss)


def check_sequence_logprobs(sequence_logprobs, solution):
    logits, targets, mask = dpo_batch()
    case = "sequence_logprobs: two rows, logits not normalised, IGNORE_INDEX targets outside the answers"
    clamp = ("targets are IGNORE_INDEX (-100) wherever loss_mask is 0, and gather cannot read index -100: "
             "clamp them first (targets.clamp(min=0)), then let the mask zero those positions")
    got = tensor(case, call(case, sequence_logprobs, logits, targets, mask, _hint=clamp), (2,),
                 "(B,): one log-probability per sequence, the sum over its answer's tokens")
    want = [math.log(0.5) + math.log(0.5), math.log(0.5) + math.log(0.25)]  # -1.3863, -2.0794
    lp = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (2, 4)
    raw = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    shifted = (logits[:, :-1].log_softmax(-1).gather(-1, targets[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
               * mask[:, 1:]).sum(-1)  # shifted once more: position t scored by the logits at t - 1
    hint = diagnose(got, [([want[0] / 2, want[1] / 2], "the SUM of the answer's token logprobs, not the mean (the "
                           "mean changes beta's scale with the answer's length)"),
                          ((raw * mask).sum(-1), "logits are not log-probabilities: log_softmax first"),
                          (lp.sum(-1), "prompt and pad positions (mask 0) contribute nothing: multiply by the mask"),
                          (shifted, "the targets are already aligned with the logits here (the shift is done): "
                           "logits[:, t] scores targets[:, t]")],
                    "sum over t of log_softmax(logits)[t, targets[t]] where loss_mask is 1")
    expect(close(got, want), case, fmt(got), fmt(want), hint)

    case = "sequence_logprobs: large logits, 1000 for another token"
    big = logits.clone()
    big[0, 1] = torch.tensor([1000.0, 0.0, -1000.0])  # the target, token 1, has log p = -1000
    got = tensor(case, call(case, sequence_logprobs, big, targets, mask, _hint=clamp), (2,))
    want = -1000.0 + math.log(0.5)
    expect(abs(num(got[0]) - want) < 1e-2, case + ": row 0", num(got[0]), want,
           "log(softmax(x)) underflows to log 0 = -inf: use F.log_softmax" if not math.isfinite(num(got[0])) else
           "the sum of log_softmax(logits) at the answer's tokens")

    check_gradient("sequence_logprobs: the first case's gradient", sequence_logprobs, solution, {"logits": logits},
                   lambda f, logits: f(logits, targets, mask))


def check_dpo_values(dpo_loss, solution):
    def losses(case, *args, **kwargs):
        got = call(case, dpo_loss, *args, **kwargs)
        expect(isinstance(got, (tuple, list)) and len(got) == 3, case + ": what comes back", type(got).__name__,
               "(losses, chosen_rewards, rejected_rewards)")
        tensor(case, got[0], args[0].shape, "one loss per pair, shape (B,): the caller takes the mean")
        return got

    beta_outside = ("beta goes INSIDE the sigmoid: -log sigmoid(beta * h), not -beta * log sigmoid(h) (beta sets "
                    "how far from the reference the policy may go, not the loss's scale)")
    case = "policy == reference: loss ln 2 for every pair"
    same = torch.tensor([-3.0, -7.0])
    got, chosen_rewards, _ = losses(case, same, same - 2, same, same - 2, beta=0.1)
    want = [math.log(2)] * 2
    hint = diagnose(got, [([0.1 * math.log(2)] * 2, beta_outside),
                          ([math.log(1 + math.exp(-0.2))] * 2, "the loss reads log-RATIOS to the reference, "
                           "log pi - log pi_ref, not the policy's logprobs alone")],
                    "h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected) = 0 here")
    expect(close(got, want), case, fmt(got), fmt(want), hint)
    expect(close(chosen_rewards, [0.0, 0.0]), case + ": implicit rewards 0", fmt(chosen_rewards), [0, 0],
           "the implicit reward is beta * (log pi - log pi_ref), 0 when they are equal")

    # chosen log-ratio -2 - (-3) = +1, rejected -6 - (-5) = -1: h = 2, beta = 0.1
    args = (torch.tensor([-2.0]), torch.tensor([-6.0]), torch.tensor([-3.0]), torch.tensor([-5.0]))
    case = "DPO: -log sigmoid(beta * h), h = 2, beta = 0.1"
    got, chosen_rewards, rejected_rewards = losses(case, *args, beta=0.1)
    want = [math.log(1 + math.exp(-0.2))]  # 0.5981
    hint = diagnose(got, [([0.1 * math.log(1 + math.exp(-2.0))], beta_outside),
                          ([math.log(1 + math.exp(-2.0))], "multiply h by beta inside the sigmoid"),
                          ([math.log(1 + math.exp(0.2))], "the sign: h = chosen log-ratio MINUS rejected log-ratio")],
                    "-log sigmoid(beta * h)")
    expect(close(got, want), case, fmt(got), fmt(want), hint)
    hint = diagnose(chosen_rewards, [([1.0], "the implicit rewards are BETA times the log-ratio"),
                                     ([-0.2], "the implicit rewards are beta times the log-RATIO to the reference")],
                    "chosen_rewards = beta * (policy_chosen - ref_chosen)")
    expect(close(chosen_rewards, [0.1]) and close(rejected_rewards, [-0.1]), case + ": implicit rewards "
           "beta * log-ratio", (fmt(chosen_rewards), fmt(rejected_rewards)), ([0.1], [-0.1]), hint)

    case = "three pairs: h = 2, -10000 and 10000 (large margins), beta = 0.1"
    got, _, _ = losses(case, torch.tensor([-2.0, -10000.0, 0.0]), torch.tensor([-6.0, 0.0, -10000.0]),
                       torch.tensor([-3.0, 0.0, 0.0]), torch.tensor([-5.0, 0.0, 0.0]), beta=0.1)
    want = [math.log(1 + math.exp(-0.2)), 1000.0, 0.0]  # beta * h = 0.2, -1000 (loss 1000), 1000 (loss ~0)
    expect(close(got, want, 1e-3), case, fmt(got), fmt(want),
           "-log sigmoid(-1000) overflows in log(sigmoid(x)) or log(1 + exp(-x)): use F.logsigmoid"
           if torch.is_tensor(got) and not torch.isfinite(got).all() else "one loss per pair, shape (B,)")

    case = "IPO: (h - 1 / (2 beta))^2 = (2 - 5)^2"
    got, _, _ = losses(case, *args, beta=0.1, loss_type="ipo")
    hint = diagnose(got, [([(2 - 10) ** 2], "the target is 1 / (2 beta) = 5, not 1 / beta"),
                          ([(0.2 - 5) ** 2], "IPO regresses h itself to 1 / (2 beta), not beta * h")],
                    "(h - 1 / (2 beta))^2")
    expect(close(got, [9.0]), case, fmt(got), [9.0], hint)

    case = "conservative DPO, eps = 0.1: -(1-eps) log s(bh) - eps log s(-bh)"
    got, _, _ = losses(case, *args, beta=0.1, loss_type="conservative", label_smoothing=0.1)
    a, b = math.log(1 + math.exp(-0.2)), math.log(1 + math.exp(0.2))  # -log s(0.2), -log s(-0.2)
    hint = diagnose(got, [([0.1 * a + 0.9 * b], "(1 - eps) weighs the label as given, eps the flipped label: you "
                           "swapped them"),
                          ([a], "use label_smoothing as eps")],
                    "-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)")
    expect(close(got, [0.9 * a + 0.1 * b]), case, fmt(got), [round(0.9 * a + 0.1 * b, 4)], hint)

    inputs = {"policy_chosen": torch.tensor([-2.0, -4.5, -1.0]), "policy_rejected": torch.tensor([-6.0, -3.0, -2.5])}
    ref_chosen, ref_rejected = torch.tensor([-3.0, -4.0, -1.5]), torch.tensor([-5.0, -3.5, -2.0])
    for loss_type in ("dpo", "ipo", "conservative"):
        check_gradient(f"the gradient of loss_type={loss_type!r}", dpo_loss, solution, inputs,
                       lambda f, policy_chosen, policy_rejected: f(policy_chosen, policy_rejected, ref_chosen,
                                                                   ref_rejected, beta=0.1, loss_type=loss_type,
                                                                   label_smoothing=0.1)[0])


# ----------------------------------------------------------------------------- the registry
def project_functions(name):
    """The project's own implementation(s) of an exercise: the solutions."""
    import data
    import dpo
    import generate
    import model
    import ppo
    import reward
    import rollout
    return {"render_chat": (data.render_chat,), "masking": (data.collate,), "sft_loss": (model.lm_loss,),
            "causal_mask": (model.causal_mask,), "kv_cache_step": (generate.KVCache,),
            "bradley_terry": (reward.bradley_terry_loss,), "response_logprobs": (rollout.response_logprobs,),
            "kl_penalty": (ppo.kl_penalty_rewards,), "gae": (ppo.gae,),
            "rollout_advantages": (ppo.rewards_and_advantages,), "ppo_losses": (ppo.policy_loss, ppo.value_loss),
            "adaptive_kl": (ppo.AdaptiveKLController,), "dpo_loss": (dpo.dpo_loss, dpo.sequence_logprobs)}[name]


# In the order a class meets them (exercises/README.md): the data and the SFT loss, the model's attention
# and generation, the reward model, then PPO's pieces in the order an iteration runs them, then DPO.
CHECKS = {"render_chat": check_render_chat, "masking": check_masking, "sft_loss": check_sft_loss,
          "causal_mask": check_causal_mask, "kv_cache_step": check_kv_cache_step,
          "bradley_terry": check_bradley_terry, "response_logprobs": check_response_logprobs,
          "kl_penalty": check_kl_penalty, "gae": check_gae, "rollout_advantages": check_rollout_advantages,
          "ppo_losses": check_ppo_losses, "adaptive_kl": check_adaptive_kl, "dpo_loss": check_dpo_loss}
