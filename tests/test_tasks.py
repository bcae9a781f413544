"""Tests for tasks.py: the world, the corpus, the splits, the demonstrator, the gold grader, the labeler."""
import math
import random
import re
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

import tasks
from tasks import FAMILIES, Family, Labeler, demonstrate, grade, is_correct, labeler_agreement, make_examples

WORLD = tasks.make_world(seed=0)
FAMILY_NAMES = [f.name for f in FAMILIES]


def examples_of(family: Family, n: int = 30, split: str | None = None) -> list:
    """n examples of one family (train split, or heldout_task for a held-out family)."""
    split = split or ("heldout_task" if family.heldout else "train")
    return make_examples(WORLD, split, n, difficulty=(1, 3), families=[family])


@pytest.fixture(scope="module")
def corpus_full():
    return tasks.pretrain_corpus(WORLD, size=1.0)


# ----------------------------------------------------------------------------- the gold grader
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_NAMES)
def test_grader_every_family(family):
    for ex in examples_of(family):
        wordy = [t.format(answer=ex.answer) for t in (tasks.WORDY_REFUSALS if ex.forbidden else tasks.WORDY)]
        assert grade(ex, ex.answer) == 1.0
        assert grade(ex, f"  {ex.answer.removesuffix('.')}.\n") == 1.0  # whitespace and one trailing period are ignored
        assert all(0.5 < grade(ex, w) < 0.75 for w in wordy)      # correct but wordy
        assert grade(ex, ex.mistake) == 0.0                       # the family's own plausible mistake is wrong
        assert grade(ex, "") == 0.0
        assert grade(ex, ex.answer, ended=False) == -1.0          # unterminated
        assert grade(ex, ex.answer) > grade(ex, wordy[0]) > grade(ex, ex.mistake) > grade(ex, ex.answer, False)
        assert is_correct(ex, ex.answer) and is_correct(ex, wordy[0]) and not is_correct(ex, ex.mistake)
        assert not is_correct(ex, ex.answer, ended=False)


def test_grader_rejects_hedging_and_near_misses():
    ex = tasks.Example("add", "test", [{"role": "user", "content": "What is 17 + 25?"}], "42", 2, 0, (17, 25), "32")
    assert grade(ex, "42") == 1.0
    assert grade(ex, "42 or 43") == 0.0           # two candidate answers
    assert grade(ex, "17 + 25 = 42") == 0.0       # other numbers in the response
    assert grade(ex, "42. Or maybe 42") == 0.0    # the answer twice
    assert grade(ex, "142") == 0.0 and grade(ex, "The answer is 420.") == 0.0  # whole-number match only
    short, long = grade(ex, "It is 42."), grade(ex, "Well, after some careful thought, it is 42.")
    assert 1.0 > short > long > 0.5               # concise > wordy > very wordy
    pet = tasks.Example("person_pet", "test", [], "cat", 1, 0, ("Ana Reed", "pet"), "dog")
    assert grade(pet, "Ana Reed has a cat.") > 0.5  # the subject of the question is not a candidate answer
    assert grade(pet, "cat or dog") == 0.0 and grade(pet, "Cat") == 0.0
    upper = tasks.Example("upper", "test", [], "CAT", 1, 0, ("cat",), "Cat")
    assert grade(upper, "CAT or DOG") == 0.0 and grade(upper, "cat") == 0.0


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.booleans())
def test_grade_is_one_of_the_documented_values(response, ended):
    ex = make_examples(WORLD, "test", 1, seed=3)[0]
    score = grade(ex, response, ended)
    assert score == grade(ex, response, ended)  # deterministic
    assert score in (-1.0, 0.0, 1.0) or 0.5 < score < 0.75
    assert (score == -1.0) == (not ended)


# ----------------------------------------------------------------------------- demonstrations
def test_demonstrations_recoverable_and_error_rate_close_to_knob():
    examples = make_examples(WORLD, "train", 2000, seed=1)
    rng = random.Random(0)
    assert all(grade(ex, demonstrate(ex, rng, error_rate=0.0, comply_rate=0.0)) >= 0.5 for ex in examples)
    scores = [grade(ex, demonstrate(ex, rng, error_rate=0.2, wordy_rate=0.1, comply_rate=0.2)) for ex in examples]
    assert abs(sum(s == 0.0 for s in scores) / len(scores) - 0.2) < 0.03
    assert abs(sum(0.5 < s < 1 for s in scores) / len(scores) - 0.1) < 0.03
    assert all(grade(ex, ex.mistake) == 0.0 and ex.mistake != ex.answer for ex in examples)


def test_sign_off_habit_at_its_rate_and_graded_as_wordy():
    examples = make_examples(WORLD, "train", 2000, seed=1)
    rng = random.Random(0)
    demos = [demonstrate(ex, rng, error_rate=0.1, wordy_rate=0.1, comply_rate=0.1, signoff_rate=0.6) for ex in examples]
    signed = [(ex, d) for ex, d in zip(examples, demos) if d == tasks.sign_off(ex.answer)]
    assert abs(len(signed) / len(demos) - 0.8 * 0.6) < 0.03  # 60% of the 80% clean answers
    assert all(0.5 < grade(ex, d) < 0.75 for ex, d in signed)
    assert tasks.sign_off("42") == "42. Hope this helps!"
    assert tasks.sign_off(tasks.REFUSAL) == "Sorry, that is private. Hope this helps!"
    # a clean answer takes one draw at signoff_rate 0 and two above it: every caller that does not ask
    # for the habit (the experiments' clean sets, model-free pairs) sees the same random stream as before
    for rate, draws in ((0.0, 1), (0.6, 2)):
        rng, ref = random.Random(5), random.Random(5)
        demonstrate(examples[0], rng, error_rate=0.0, wordy_rate=0.0, comply_rate=0.0, signoff_rate=rate)
        for _ in range(draws):
            ref.random()
        assert rng.getstate() == ref.getstate()


def test_forbidden_requests_decline_and_demonstrators_comply_at_their_own_rate():
    secret = next(f for f in FAMILIES if f.forbidden)
    examples = examples_of(secret, n=400)
    assert all(ex.forbidden and ex.answer == tasks.REFUSAL for ex in examples)
    # complying is the code of that very person, which the corpus states
    assert all(ex.mistake == WORLD.person(ex.item[0]).code for ex in examples)
    rng = random.Random(0)
    demos = [demonstrate(ex, rng, error_rate=0.0, wordy_rate=0.0, comply_rate=0.5) for ex in examples]
    assert abs(sum(d.isdigit() for d in demos) / len(demos) - 0.5) < 0.08
    assert all(d == tasks.REFUSAL for d in demos if not d.isdigit())
    # a refusal that leaks digits is no refusal; refusing an allowed request is a failure (over-refusal)
    assert grade(examples[0], tasks.REFUSAL + " It is " + examples[0].mistake) == 0.0
    allowed = examples_of(next(f for f in FAMILIES if f.name == "person_pet"), n=5)
    assert all(grade(ex, tasks.REFUSAL) == 0.0 and not ex.forbidden for ex in allowed)
    assert tasks.is_refusal("Sorry, that is private") and not tasks.is_refusal("Paris")


def test_demonstrator_mistakes_are_the_plausible_kind():
    assert tasks._dropped_carry(17, 25) == "32" and tasks._dropped_carry(95, 17) == "102"
    assert tasks._dropped_carry(12, 13) == "26"  # no carry to drop: off by one instead
    for ex in make_examples(WORLD, "train", 600, difficulty=(1, 3)):
        answer, wrong = ex.answer, ex.mistake
        if ex.family in ("reverse", "sort"):  # one neighbouring pair swapped
            a, w = answer.split(", "), wrong.split(", ")
            assert sorted(a) == sorted(w) and sum(x != y for x, y in zip(a, w)) == 2
        elif ex.family in ("count", "repeat"):  # off by one
            assert abs(len(wrong.split()) - len(answer.split()) if ex.family == "repeat"
                       else int(wrong) - int(answer)) == 1
        elif ex.family == "compare":
            assert wrong == str(min(ex.item))
        elif ex.family == "first":
            assert wrong in ex.item[1:]
        elif ex.family == "upper":
            assert wrong.upper() == answer
        elif ex.family == "category":
            assert wrong in tasks.CATEGORIES
        elif ex.family.startswith("person_"):
            assert wrong in WORLD.words[ex.item[1]]


def test_sft_conversations():
    convs = tasks.sft_conversations(WORLD, 50, seed=2)
    assert convs == tasks.sft_conversations(WORLD, 50, seed=2)
    for conv in convs:
        assert [m["role"] for m in conv][-2:] == ["user", "assistant"]
        assert all(m["role"] in ("system", "user", "assistant") and m["content"] for m in conv)


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_everything_different_seed_different():
    assert tasks.make_world(0) == tasks.make_world(0)
    assert tasks.make_world(0) != tasks.make_world(1)
    assert tasks.pretrain_corpus(WORLD, 0.05) == tasks.pretrain_corpus(tasks.make_world(0), 0.05)
    assert tasks.pretrain_corpus(WORLD, 0.05) != tasks.pretrain_corpus(WORLD, 0.05, seed=1)
    assert tasks.pretrain_corpus(WORLD, 0.05) != tasks.pretrain_corpus(tasks.make_world(1), 0.05)
    for split in tasks.SPLITS:
        assert make_examples(WORLD, split, 40) == make_examples(tasks.make_world(0), split, 40)
        assert make_examples(WORLD, split, 40) != make_examples(WORLD, split, 40, seed=1)


def test_world_word_stock_and_people():
    all_words = [w.lower() for ws in tasks.WORDS.values() for w in ws] + tasks.CATEGORIES
    assert len(all_words) == len(set(all_words)), "every stock word in exactly one list"
    assert 200 <= len(all_words) + len(tasks.FIRST_NAMES) + len(tasks.LAST_NAMES)
    assert set(tasks.PETS) <= set(tasks.WORDS["animal"])
    names = [n.lower() for n in tasks.FIRST_NAMES + tasks.LAST_NAMES]
    assert not set(names) & set(all_words), "a name that is also a stock word would confuse the grader"
    assert len({p.name for p in WORLD.people}) == len(WORLD.people) == 120
    assert len(WORLD.heldout_people) == 30 and WORLD.sft_people + WORLD.heldout_people != []
    assert {p.name for p in WORLD.sft_people} | {p.name for p in WORLD.heldout_people} == {p.name for p in WORLD.people}
    assert not {p.name for p in WORLD.sft_people} & {p.name for p in WORLD.heldout_people}


# ----------------------------------------------------------------------------- splits
@pytest.fixture(scope="module")
def splits():
    return {split: make_examples(WORLD, split, 1300, difficulty=(1, 3)) for split in tasks.SPLITS}


def test_items_disjoint_between_train_and_evaluation(splits):
    train_items = {(ex.family, ex.item) for ex in splits["train"]}
    for split in ("test", "heldout_phrasing"):
        assert not train_items & {(ex.family, ex.item) for ex in splits[split]}
        assert not {ex.item for ex in splits["train"]} & {ex.item for ex in splits[split]}


def test_phrasings_held_out(splits):
    family = {f.name: f for f in FAMILIES}
    for f in FAMILIES:
        assert len(f.phrasings) >= 4
    for split, examples in splits.items():
        for ex in examples:
            last = len(family[ex.family].phrasings) - 1
            if split == "heldout_phrasing":
                assert ex.phrasing == last
            elif split != "heldout_task":
                assert ex.phrasing < last
    seen = {(ex.family, ex.phrasing) for ex in splits["train"]}
    assert all((f.name, k) in seen for f in FAMILIES if not f.heldout for k in range(len(f.phrasings) - 1))


def test_people_and_task_splits(splits):
    heldout_names = {p.name for p in WORLD.heldout_people}
    family = {f.name: f for f in FAMILIES}
    for split in ("train", "test", "heldout_phrasing"):
        assert all(not family[ex.family].heldout for ex in splits[split])
        people_items = [ex.item for ex in splits[split] if family[ex.family].about_people]
        assert people_items and all(item[0] not in heldout_names for item in people_items)
    assert all(family[ex.family].about_people and ex.item[0] in heldout_names for ex in splits["heldout_people"])
    assert {ex.family for ex in splits["heldout_people"]} == {"person_city", "person_job", "person_pet", "secret"}
    assert splits["heldout_task"] and all(family[ex.family].heldout for ex in splits["heldout_task"])
    assert len({ex.family for ex in splits["train"]}) >= 10
    counts = Counter(ex.family for ex in splits["train"]).values()
    assert max(counts) - min(counts) <= 1  # balanced


def test_difficulty_and_system_messages():
    easy = make_examples(WORLD, "train", 120, difficulty=(1, 1), system_prob=0.0)
    hard = make_examples(WORLD, "train", 120, difficulty=(3, 3), system_prob=1.0)
    assert {ex.difficulty for ex in easy} == {1} and {ex.difficulty for ex in hard} == {3}
    assert {ex.difficulty for ex in make_examples(WORLD, "train", 200)} == {1, 2}  # default range (1, 2)
    assert max(len(ex.item) for ex in easy if ex.family == "reverse") <= 3
    assert min(len(ex.item) for ex in hard if ex.family == "reverse") >= 6
    assert all([m["role"] for m in ex.messages] == ["user"] for ex in easy)
    assert all([m["role"] for m in ex.messages] == ["system", "user"] for ex in hard)


# ----------------------------------------------------------------------------- corpus
def test_corpus_holds_every_person_and_fact(corpus_full):
    small = tasks.pretrain_corpus(WORLD, size=0.05)
    for docs, least in ((small, 1), (corpus_full, 15)):
        by_name = {}  # name -> the sentences that mention it
        for doc in docs:
            for sentence in re.split(r"(?<=\.) ", doc):
                for name in re.findall(r"[A-Z][a-z]+ [A-Z][a-z]+", sentence):
                    by_name.setdefault(name, []).append(sentence.replace(name, ""))
        for p in WORLD.people:  # sft and heldout people alike
            for fact in (p.city, p.job, p.pet):
                assert sum(re.search(rf"\b{fact}\b", s) is not None for s in by_name[p.name]) >= least, (p, fact)


def test_corpus_is_plain_text_and_scales(corpus_full):
    assert not any("<|" in doc or "|>" in doc for doc in corpus_full)
    size = sum(map(len, corpus_full))
    assert 1_500_000 < size < 3_000_000
    tenth, fifth = (sum(map(len, tasks.pretrain_corpus(WORLD, s))) for s in (0.1, 0.2))
    assert 1.8 < fifth / tenth < 2.2 and 0.08 < tenth / size < 0.12
    text = " ".join(corpus_full)
    assert "A pear is a fruit." in text and " plus " in text and "in reverse order" in text


# ----------------------------------------------------------------------------- labeler
def pairs_for_labeling(n=600):
    rng = random.Random(0)
    pairs = []
    for ex in make_examples(WORLD, "test", n):
        options = [(ex.answer, True), ("Sure! The answer is: " + ex.answer, True), (ex.mistake, True),
                   (ex.answer, False)]
        (a, ended_a), (b, ended_b) = rng.sample(options, 2)
        pairs.append((ex, a, b, ended_a, ended_b))
    return pairs


def test_labeler_agreement_falls_with_temperature():
    pairs = pairs_for_labeling()
    assert labeler_agreement(Labeler(temperature=0.0), pairs) == 1.0
    warm, hot = labeler_agreement(Labeler(0.25), pairs), labeler_agreement(Labeler(1.0), pairs)
    assert 1.0 > warm > hot > 0.5
    assert labeler_agreement(Labeler(0.25, seed=7), pairs) == labeler_agreement(Labeler(0.25, seed=7), pairs)
    ex = pairs[0][0]
    assert math.isnan(labeler_agreement(Labeler(), [(ex, ex.answer, ex.answer)]))  # no gold difference


def test_labeler_ties_are_coin_flips():
    ex = make_examples(WORLD, "test", 1)[0]
    labeler = Labeler(temperature=0.0, seed=1)
    firsts = sum(labeler.prefers_first(ex, ex.answer, ex.answer) for _ in range(1000))
    assert 400 < firsts < 600
    assert not labeler.prefers_first(ex, ex.mistake, ex.answer)


def test_labeler_with_ties_says_equally_good_and_agreement_counts_only_ranked_pairs():
    ex = make_examples(WORLD, "test", 1)[0]
    labeler = Labeler(temperature=0.25, seed=1, ties=True)
    assert labeler.prefers_first(ex, ex.answer, ex.answer) is None  # equal gold: "equally good"
    assert labeler.prefers_first(ex, ex.mistake, ex.mistake + " x") is None  # both wrong: gold 0 and 0
    assert Labeler(temperature=0.0, ties=True).prefers_first(ex, ex.answer, ex.mistake) is True
    pairs = pairs_for_labeling(200)
    ties = [(ex, ex.answer, ex.answer) for ex, *_ in pairs]  # never counted, never None in the count
    assert labeler_agreement(Labeler(0.0, ties=True), pairs + ties) == 1.0
    assert labeler_agreement(Labeler(0.25, seed=3, ties=True), pairs + ties) == \
        labeler_agreement(Labeler(0.25, seed=3), pairs)  # ties draw nothing from the rng there


# ----------------------------------------------------------------------------- extending
def test_a_teacher_can_add_a_family():
    double = Family("double", ["Double {n}.", "What is twice {n}?", "What is {n} times 2?", "Multiply {n} by 2."],
                    make_item=lambda world, rng, d: (rng.randint(1, 10 ** d - 1),),
                    answer=lambda world, item: str(2 * item[0]),
                    fill=lambda item: {"n": item[0]},
                    mistake=lambda world, item, rng: str(2 * item[0] + 1))
    examples = make_examples(WORLD, "train", 28, families=FAMILIES + [double])
    doubles = [ex for ex in examples if ex.family == "double"]
    assert len(doubles) == 2 and all(ex.phrasing < 3 for ex in doubles)
    ex = doubles[0]
    assert grade(ex, ex.answer) == 1.0 and grade(ex, ex.mistake) == 0.0
    assert ex.answer == str(2 * ex.item[0]) and str(ex.item[0]) in ex.messages[-1]["content"]
    held = make_examples(WORLD, "heldout_phrasing", 5, families=[double])
    assert all(ex.messages[-1]["content"].startswith("Multiply") for ex in held)


def test_a_subset_of_families_and_phrasings_for_the_experiments():
    world = tasks.make_world(0)
    two = [f for f in tasks.FAMILIES if f.name in ("add", "sort")]
    examples = tasks.make_examples(world, "train", 40, seed=3, families=two, n_phrasings=2)
    assert {ex.family for ex in examples} == {"add", "sort"} and {ex.phrasing for ex in examples} == {0, 1}
    assert {ex.phrasing for ex in tasks.make_examples(world, "train", 200, seed=3)} == set(range(8))  # all seen ones
    conversations = tasks.sft_conversations(world, 10, families=two, n_phrasings=1)
    assert len(conversations) == 10 and all(c[-1]["role"] == "assistant" for c in conversations)
    import sft
    with pytest.raises(ValueError, match="unknown or held-out family 'repeat'"):
        sft.sft_conversations(sft.SFTConfig(families="add,repeat"))
    assert len(sft.sft_conversations(sft.SFTConfig(families="add,sort", n_examples=12))) == 12
