"""RLAIF and Constitutional AI: the constitution file, the feedback tasks, the judge's parsing and labels.
The stages end to end: tests/test_pipeline.py runs the quick pipeline with --rlaif."""

import random

import pytest

import rlaif
import tasks
from formats import DataError
from judge import (AIJudge, candidate_answers, critique_of, feedback_conversations, judge_agreement,
                   judge_prompt, load_constitution, parse_revision, parse_verdict, question_of)

WORLD = tasks.make_world(0)


def example(family, n=1, split="train"):
    return tasks.make_examples(WORLD, split, n, families=[f for f in tasks.FAMILIES if f.name == family])


# ----------------------------------------------------------------------------- the constitution
def test_constitution_is_read_from_its_file(tmp_path):
    path = tmp_path / "rules.txt"
    path.write_text("# a comment\n\nBe kind to frogs.\n   Never say the word plum.  \n")
    assert load_constitution(path) == ["Be kind to frogs.", "Never say the word plum."]
    # the principles reach the feedback model's prompts: each judgement and critique shows one of them
    convs = feedback_conversations(WORLD, 40, load_constitution(path), seed=1)
    shown = {conv[0]["content"].split("\n")[0] for conv in convs}
    assert shown == {"Principle: Be kind to frogs.", "Principle: Never say the word plum."}


def test_the_shipped_constitution_covers_both_axes():
    principles = load_constitution(rlaif.RLAIFConfig().constitution)
    text = " ".join(principles).lower()
    assert len(principles) >= 3 and "secret" in text and "refuse" in text


def test_a_bad_constitution_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        load_constitution(tmp_path / "nowhere.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(DataError, match="empty.txt"):
        load_constitution(empty)


# ----------------------------------------------------------------------------- parsing the feedback model
@pytest.mark.parametrize("text, verdict", [
    ("Answer: 42\nBetter: A", "A"),
    ("Answer: cat, dog\nBetter: B", "B"),
    ("better:b", "B"),                         # case and spacing
    ("Better:  A.", "A"),
    ("B", "B"), (" a. ", "A"),                 # a bare letter
    ("Answer: 42\nBetter: A\nBetter: A", "A"),  # repeated, the same
    ("", None),                                # nothing
    ("Answer: 42", None),                      # no verdict
    ("Answer: 42\nBetter: C", None),           # neither A nor B
    ("Better: AB", None),                      # not one letter
    ("Better: A\nBetter: B", None),            # contradicts itself
    ("Answer: A\nBetter:", None),              # the letter in the answer is not a verdict
    ("Both are fine.", None),
    ("555555555555555", None),
])
def test_parse_verdict_handles_malformed_output(text, verdict):
    assert parse_verdict(text) == verdict


def test_parse_revision():
    assert parse_revision("Critique: It is wrong.\nRevision: 42") == "42"
    assert parse_revision("Critique: It gives away a private detail.\nRevision: Sorry, that is private.") \
        == "Sorry, that is private."
    assert parse_revision("Critique: It is wrong.") is None
    assert parse_revision("Critique: It is wrong.\nRevision:   ") is None
    assert parse_revision("Revision: 4\nRevision: 5") is None


# ----------------------------------------------------------------------------- feedback demonstrations
def test_feedback_demonstrations_follow_the_gold_rule():
    principles = load_constitution(rlaif.RLAIFConfig().constitution)
    examples = tasks.make_examples(WORLD, "train", 300, seed=101 + 5)
    convs = feedback_conversations(WORLD, 300, principles, seed=5, judge_share=0.5, clip_chars=1000)
    assert len(convs) == 300
    n_judge = 0
    for ex, (prompt, reply) in zip(examples, convs):
        assert question_of([prompt]) in prompt["content"] and ex.messages[-1]["content"] in prompt["content"]
        body = prompt["content"]
        if body.endswith("Which is better?"):  # a judgement: the gold-better answer wins
            n_judge += 1
            a = body.split("\nA: ")[1].split("\nB: ")[0]
            b = body.split("\nB: ")[1].split("\nWhich is better?")[0]
            verdict = parse_verdict(reply["content"])
            assert tasks.grade(ex, a) != tasks.grade(ex, b)
            assert verdict == ("A" if tasks.grade(ex, a) > tasks.grade(ex, b) else "B")
            assert reply["content"].startswith(f"Answer: {ex.answer}\n")
        else:  # a critique: the revision is the right answer (the refusal for a forbidden request)
            assert parse_revision(reply["content"]) == ex.answer
    assert 100 < n_judge < 200


def test_critiques_name_the_flaw():
    add, = example("add")
    secret, = example("secret")
    assert critique_of(add, add.answer) == "It is right."
    assert critique_of(add, add.mistake) == "It is wrong."
    assert critique_of(add, f"The answer is {add.answer}.") == "It is right, with extra words."
    assert critique_of(add, tasks.REFUSAL) == "It refuses a harmless request."
    assert critique_of(secret, secret.mistake) == "It gives away a private detail."
    assert critique_of(secret, tasks.REFUSAL) == "It declines, as it should."


def test_candidate_answers_span_both_axes():
    rng = random.Random(0)
    secret, = example("secret")
    answers = candidate_answers(WORLD, secret, rng)
    assert tasks.REFUSAL in answers and secret.mistake in answers and len(set(answers)) == len(answers)
    city, = example("person_city")
    answers = candidate_answers(WORLD, city, rng)
    assert city.answer in answers and tasks.REFUSAL in answers  # over-refusal is a candidate to judge down


# ----------------------------------------------------------------------------- the judge's labels
class ScriptedJudge(AIJudge):
    """An AIJudge whose verdicts (generate mode) or log-ratios (likelihood mode) come from a script
    instead of a model: the labelling logic alone."""

    def __init__(self, script, mode="generate", **kw):
        super().__init__(_Model(), None, ["Be right."], mode=mode, **kw)
        self.script, self.calls = script, []

    def verdicts(self, questions, a, b, principles):
        self.calls.append(list(zip(a, b)))
        return [self.script(x, y) for x, y in zip(a, b)]

    log_ratios = verdicts


class _Model:
    def eval(self):
        return self


def test_generating_judge_keeps_a_pair_only_when_both_orders_agree():
    add, = example("add")
    cands = [(add, "good", "bad"), (add, "bad", "good"), (add, "left", "right"), (add, "junk", "bad")]

    def script(x, y):
        if "left" in (x, y):
            return "A"   # always the first position: inconsistent
        if "junk" in (x, y):
            return None  # malformed output
        return "A" if x == "good" else "B"

    judge = ScriptedJudge(script)
    assert judge.label_pairs(cands) == [True, False, None, None]
    assert judge.calls[1] == [(b, a) for _, a, b in cands]  # the second pass swaps the order
    assert judge.stats == {"pairs": 4, "inconsistent": 1, "unparsed": 1}
    one_way = ScriptedJudge(script, swap=False)
    assert one_way.label_pairs(cands) == [True, False, True, None] and len(one_way.calls) == 1
    coin = ScriptedJudge(script, fallback=True, seed=3)
    assert [type(v) for v in coin.label_pairs(cands)] == [bool] * 4


def test_likelihood_judge_adds_both_orders_so_position_cancels():
    add, = example("add")
    # log p("Answer: x") - log p("Answer: y") in the prompt (A=x, B=y): a bonus of 5 for the answer shown
    # first, plus its real merit. Merit decides once both orders are added up.
    merit = {"good": 1.0, "bad": 0.0, "same": 0.5}
    judge = ScriptedJudge(lambda x, y: 5.0 + merit[x] - merit[y], mode="likelihood")
    assert judge.label_pairs([(add, "good", "bad"), (add, "bad", "good"), (add, "same", "same")]) == [True, False, None]
    assert judge.stats == {"pairs": 3, "tie": 1}
    one_way = ScriptedJudge(lambda x, y: 5.0 + merit[x] - merit[y], mode="likelihood", swap=False)
    assert one_way.label_pairs([(add, "bad", "good")]) == [True]  # one order: the position bias wins
    with pytest.raises(ValueError, match="judge mode"):
        ScriptedJudge(None, mode="vibes")


def test_likelihood_judge_scores_the_reference_answer_it_writes():
    """On a real (tiny, untrained) model: the log-ratio is log p("Answer: a\nBetter:") - log p("Answer:
    b\nBetter:") after the judging prompt, computed here token by token."""
    import torch
    from data import encode_content, render_prompt
    from tokenizer import Tokenizer
    from model import GPT, GPTConfig
    tok = Tokenizer.train("Answer: 42 43 Better: A B Principle Question Which is better? " * 20, 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16)).eval()
    judge = AIJudge(model, tok, ["Be right."])
    question, a, b = "What is 40 + 2?", "42", "43"
    got = judge.log_ratios([question], [a], [b], ["Be right."])[0]
    prompt = render_prompt(tok, judge_prompt(question, a, b, "Be right."))

    def by_hand(answer):
        ids = prompt + encode_content(tok, f"Answer: {answer}\nBetter:")
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids]))[0][0], -1)
        return sum(logp[t - 1, ids[t]].item() for t in range(len(prompt), len(ids)))

    assert got == pytest.approx(by_hand(a) - by_hand(b), abs=1e-4)


def test_judge_agreement_against_gold():
    add, = example("add")
    pairs = [{"prompt": add.messages, "chosen": c, "rejected": r, "gold_chosen": 1.0, "gold_rejected": 0.0,
              "family": f} for c, r, f in (("good", "bad", "add"), ("good2", "bad2", "add"), ("left", "right", "sort"),
                                           ("good", "bad", "sort"))]

    def script(x, y):
        if "left" in (x, y):
            return "A"  # position only: inconsistent, no label
        if "good2" in (x, y):
            return "B" if x == "good2" else "A"  # consistently wrong
        return "A" if x == "good" else "B"

    results = judge_agreement(ScriptedJudge(script), pairs)
    assert results["pairs"] == 4
    assert results["agreement"] == pytest.approx(2 / 4)
    assert results["decided"] == pytest.approx(3 / 4)
    assert results["agreement/add"] == pytest.approx(1 / 2) and results["agreement/sort"] == pytest.approx(1 / 2)


def test_rlaif_labels_go_through_the_preference_stages_pair_builder():
    import preferences
    add, = example("add")
    judge = ScriptedJudge(lambda x, y: "A" if x == add.answer else "B")
    pairs = preferences.labelled_pairs(judge, [(add, add.mistake, add.answer), (add, add.answer, add.mistake)])
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(add.answer, add.mistake)] * 2
    assert pairs[0]["gold_chosen"] == 1.0 and pairs[0]["gold_rejected"] == 0.0


def test_stage_names_are_checked():
    with pytest.raises(ValueError, match="unknown stage"):
        rlaif.stages(rlaif.RLAIFConfig(stages="feedback,rlhf"))
    assert [name for name, _ in rlaif.stages(rlaif.RLAIFConfig())] == \
        ["feedback", "preferences", "reward", "ppo", "dpo", "cai_sft", "cai_ppo"]
    assert set(rlaif.STAGE_DIRS) == {name for name, _ in rlaif.stages(rlaif.RLAIFConfig())}
