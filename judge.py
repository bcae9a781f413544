"""
judge.py: the AI feedback model's tasks, and the judge that labels pairs with it (RLAIF, Constitutional AI).

The feedback model reads one principle of a written constitution and either judges two answers
("Answer: <the answer it would give>" then "Better: A|B") or critiques and revises one ("Critique: ...",
"Revision: ..."). This file holds those prompts, their parsers, the demonstrations that teach the tasks
(written by the gold rule, tasks.grade), and AIJudge, which labels pairs with tasks.Labeler's interface,
so preferences.py takes it in place of the simulated human. rlaif.py trains the model and runs the stages.

  principles = load_constitution("constitution.txt")
  judge = AIJudge(load_policy("runs/default/rlaif/feedback/model.pt", "cpu"), tok, principles)
  judge.label_pairs([(example, "42", "43")])           # [True]: the first answer is better

References: Bai et al. 2022, "Constitutional AI" (arXiv 2212.08073); Lee et al. 2023, "RLAIF"
(arXiv 2309.00267: the verdict read off P("1") vs P("2")); Zheng et al. 2023 (arXiv 2306.05685:
position bias, reference-guided judging). Departures: see rlaif.py.
"""

import os
import random
import re
from collections import Counter

import tasks
from data import encode_content, render_prompt
from dpo import pair_logprobs
from evaluate import respond
from formats import DataError


# -----------------------------------------------------------------------------
# The constitution and the feedback tasks


def load_constitution(path):
    """The principles in a text file: one per line; blank lines and lines starting with # are skipped."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no constitution file (one principle per line)")
    with open(path, encoding="utf-8") as f:
        principles = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not principles:
        raise DataError(f"{path}: the constitution has no principle (every line is blank or a # comment)")
    return principles


def question_of(prompt):
    """The user's request: the last user message of a prompt (an Example or a message list)."""
    messages = getattr(prompt, "messages", prompt)
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def clip(text, n):
    return text if len(text) <= n else text[:n] + "..."


def judge_prompt(question, a, b, principle, clip_chars=40):
    """The feedback model's judging task, one user message."""
    return [{"role": "user", "content": f"Principle: {principle}\nQuestion: {question}\nA: {clip(a, clip_chars)}\n"
                                        f"B: {clip(b, clip_chars)}\nWhich is better?"}]


def critique_prompt(question, answer, principle, clip_chars=40):
    """The feedback model's critique-and-revise task, one user message."""
    return [{"role": "user", "content": f"Principle: {principle}\nQuestion: {question}\n"
                                        f"Answer: {clip(answer, clip_chars)}\nCritique and revise."}]


VERDICT = re.compile(r"better\s*:\s*([ab])\b", re.IGNORECASE)


def parse_verdict(text):
    """"A", "B" or None from a judgement. Reads "Better: A" (any case, any spacing) or a bare "A" / "B";
    None when there is no verdict, when it is neither A nor B, or when two verdicts contradict."""
    found = {v.upper() for v in VERDICT.findall(text)}
    if len(found) == 1:
        return found.pop()
    bare = text.strip().rstrip(".").strip()
    return bare.upper() if not found and bare.upper() in ("A", "B") else None


def parse_revision(text):
    """The revised answer after "Revision:" (to the end of the text), or None if there is none."""
    _, sep, revision = text.partition("Revision:")
    revision = revision.strip()
    return revision if sep and revision and "Revision:" not in revision else None


def critique_of(example, answer):
    """What a careful critic says of an answer, by the gold rule (the feedback demonstrations' critique)."""
    score = tasks.grade(example, answer)
    if example.forbidden:
        return "It declines, as it should." if score >= 0.5 else "It gives away a private detail."
    if tasks.is_refusal(answer):
        return "It refuses a harmless request."
    if score == 1.0:
        return "It is right."
    return "It is right, with extra words." if score >= 0.5 else "It is wrong."


FAMILY = {f.name: f for f in tasks.FAMILIES}


def candidate_answers(world, example, rng):
    """The kinds of answer a judge must tell apart: clean, wordy, wrong (two plausible mistakes, bare
    and wordy), and the refusal; for a forbidden request: the refusal, bare and wordy, and complying."""
    if example.forbidden:  # complying: the true code (example.mistake), or a made-up one
        wordy, other = tasks.WORDY_REFUSALS, str(rng.randint(1000, 9999))
    else:
        wordy, other = tasks.WORDY, FAMILY[example.family].mistake(world, example.item, rng)
    answers = [example.answer, rng.choice(wordy).format(answer=example.answer), example.mistake, other,
               rng.choice(tasks.WORDY).format(answer=example.mistake), tasks.REFUSAL]
    return list(dict.fromkeys(answers))


def feedback_conversations(world, n, principles, seed=0, judge_share=0.85, clip_chars=40):
    """n feedback demonstrations as chat conversations: judgements ("Answer: <the right answer>" then
    "Better: A|B", the answer of higher gold score) and critiques ("Critique: ..." then "Revision: <the
    right answer>"), on train-split prompts."""
    rng = random.Random(seed)
    convs = []
    for ex in tasks.make_examples(world, "train", n, seed=seed + 101):
        answers = candidate_answers(world, ex, rng)
        principle, question = rng.choice(principles), question_of(ex)
        if rng.random() < judge_share:
            while True:
                a, b = rng.sample(answers, 2)
                if tasks.grade(ex, a) != tasks.grade(ex, b):
                    break
            better = "A" if tasks.grade(ex, a) > tasks.grade(ex, b) else "B"
            prompt, reply = judge_prompt(question, a, b, principle, clip_chars), f"Answer: {ex.answer}\nBetter: {better}"
        else:
            answer = rng.choice(answers)
            prompt = critique_prompt(question, answer, principle, clip_chars)
            reply = f"Critique: {critique_of(ex, answer)}\nRevision: {ex.answer}"
        convs.append(prompt + [{"role": "assistant", "content": reply}])
    return convs


# -----------------------------------------------------------------------------
# The AI judge


class AIJudge:
    """The feedback model as an annotator, with tasks.Labeler's batch interface: label_pairs(candidates)
    -> [True (a better) | False (b better) | None (no verdict)], candidates [(example or prompt, a, b)].

    mode "likelihood" (default): the judge's verdict is read off its probabilities, as RLAIF reads
      P("1") and P("2") (Lee et al. 2023). In the judging prompt the feedback model first writes the
      answer it would give ("Answer: ..."); a is better when log p("Answer: a") > log p("Answer: b")
      under that prompt, the two log-ratios of both orders (a, b) and (b, a) added up, so a preferred
      position cancels out. None only on an exact tie.
    mode "generate": the judge writes its verdict ("Better: A"), parse_verdict reads it; both orders
      are judged and the pair is kept only when they agree. At this model size it does not work: the
      judge writes the right answer, but its verdict does not compare it with A and B (README).
    stats counts what happened."""

    def __init__(self, model, tok, principles, seed=0, mode="likelihood", swap=True, clip_chars=40,
                 max_new_tokens=32, fallback=False):
        if mode not in ("likelihood", "generate"):
            raise ValueError(f"judge mode must be 'likelihood' or 'generate', got {mode!r}")
        self.model, self.tok, self.principles, self.mode = model.eval(), tok, principles, mode
        self.rng, self.swap, self.clip_chars, self.max_new_tokens = random.Random(seed), swap, clip_chars, max_new_tokens
        self.fallback = fallback  # undecided pairs: a coin flip instead of None
        self.stats = Counter()

    def verdicts(self, questions, a, b, principles):
        """Generated verdicts "A" / "B" / None for the prompts (question, A=a, B=b, principle)."""
        prompts = [judge_prompt(q, x, y, p, self.clip_chars) for q, x, y, p in zip(questions, a, b, principles)]
        replies = respond(self.model, self.tok, prompts, 0.0, self.max_new_tokens, batch_size=256)
        return [parse_verdict(reply.text) for reply in replies]  # a verdict counts even if the reply rambles on

    def log_ratios(self, questions, a, b, principles):
        """log p("Answer: a") - log p("Answer: b"), each under the judging prompt (question, A=a, B=b)."""
        rows = []
        for q, x, y, p in zip(questions, a, b, principles):
            prompt = render_prompt(self.tok, judge_prompt(q, x, y, p, self.clip_chars))
            conts = [encode_content(self.tok, f"Answer: {answer}\nBetter:") for answer in (x, y)]
            rows.append(tuple((prompt + c, [0] * len(prompt) + [1] * len(c)) for c in conts))
        logp_a, logp_b = pair_logprobs(self.model, rows, self.tok.pad_id, self.model.config.block_size)
        return (logp_a - logp_b).tolist()

    def label_pairs(self, candidates):
        questions = [question_of(ex) for ex, _, _ in candidates]
        a, b = [c[1] for c in candidates], [c[2] for c in candidates]
        principles = [self.rng.choice(self.principles) for _ in candidates]
        labels = []
        if self.mode == "likelihood":
            diff = self.log_ratios(questions, a, b, principles)
            if self.swap:  # in the swapped prompt b is shown first; its log-ratio is log p(b) - log p(a)
                diff = [d - e for d, e in zip(diff, self.log_ratios(questions, b, a, principles))]
            for d in diff:
                self.stats["pairs"] += 1
                self.stats["tie"] += d == 0
                labels.append(None if d == 0 else d > 0)
        else:
            first = self.verdicts(questions, a, b, principles)
            second = self.verdicts(questions, b, a, principles) if self.swap else [None] * len(first)
            for v1, v2 in zip(first, second):
                self.stats["pairs"] += 1
                if v1 is None or (self.swap and v2 is None):
                    self.stats["unparsed"] += 1
                    labels.append(None)
                elif self.swap and v1 == v2:  # "A" both times: the position won, not an answer
                    self.stats["inconsistent"] += 1
                    labels.append(None)
                else:
                    labels.append(v1 == "A")
        if self.fallback:
            labels = [self.rng.random() < 0.5 if label is None else label for label in labels]
        return labels


def judge_agreement(judge, pairs):
    """The judge against the gold rule on pairs with different gold scores ({"prompt", "chosen",
    "rejected", "gold_chosen", "gold_rejected", "family"}; chosen is the gold-better one), shown with
    the gold-better answer first for half of the pairs. agreement: share of pairs labelled as the gold
    rule does (undecided ones count as wrong); decided: share with a label; agreement/<family>."""
    ranked = [p for p in pairs if p["gold_chosen"] != p["gold_rejected"]]
    if not ranked:
        return {}
    flip = [i % 2 == 1 for i in range(len(ranked))]
    candidates = [(p["prompt"], p["rejected"], p["chosen"]) if f else (p["prompt"], p["chosen"], p["rejected"])
                  for p, f in zip(ranked, flip)]
    labels = judge.label_pairs(candidates)
    right = [label is not None and label != f for label, f in zip(labels, flip)]
    results = {"pairs": len(ranked), "agreement": sum(right) / len(ranked),
               "decided": sum(label is not None for label in labels) / len(ranked)}
    for family in sorted({p["family"] for p in ranked}):
        idx = [i for i, p in enumerate(ranked) if p["family"] == family]
        results[f"agreement/{family}"] = sum(right[i] for i in idx) / len(idx)
    return results
