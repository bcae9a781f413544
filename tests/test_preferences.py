"""Tests of preferences.py: model-free pairs, pairs from a policy's samples (deduplicated, unterminated
answers dropped, ties dropped, demonstrations added), the JSONL round trip, a user's file split,
and best-of-N (evaluate.best_of_n) on fixed samples."""

import json
import random

import pytest
import torch

import evaluate
import preferences
import tasks
from evaluate import Answer
from formats import load_preferences_jsonl, write_preferences_jsonl
from preferences import label_agreement, modelfree_preferences, policy_preferences

WORLD = tasks.make_world(0)


def test_modelfree_preferences_follow_the_gold_rule():
    examples = tasks.make_examples(WORLD, "train", 130, seed=3)
    pairs = modelfree_preferences(examples, random.Random(0))
    assert len(pairs) == len(examples)
    assert all(p["gold_chosen"] > p["gold_rejected"] for p in pairs)
    assert {p["family"] for p in pairs} == {ex.family for ex in examples}
    assert label_agreement(pairs) == 1.0


def test_preference_files_round_trip(tmp_path):
    pairs = modelfree_preferences(tasks.make_examples(WORLD, "train", 40, seed=4), random.Random(0))
    path = tmp_path / "preferences" / "train.jsonl"
    write_preferences_jsonl(path, pairs)
    loaded = load_preferences_jsonl(path)
    assert loaded == pairs  # the world's family and gold scores too
    assert all(set(p) == {"prompt", "chosen", "rejected", "family", "gold_chosen", "gold_rejected"} for p in loaded)


def test_policy_preferences_dedupe_drop_unterminated_and_label(monkeypatch):
    examples = tasks.make_examples(WORLD, "train", 3, seed=5)
    canned = []
    for ex in examples:  # k = 4 samples per prompt: answer twice, the mistake, an unterminated wordy one
        canned += [(ex.answer, True, 2), (ex.answer, True, 2), (ex.mistake, True, 2), ("Sure! " + ex.answer, False, 9)]
    monkeypatch.setattr(preferences, "respond", lambda *args, **kwargs: [Answer(*a) for a in canned])
    pairs = policy_preferences(None, None, examples, tasks.Labeler(temperature=0.0), k=4)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(ex.answer, ex.mistake) for ex in examples]
    assert all(p["gold_chosen"] == 1.0 and p["gold_rejected"] == 0.0 for p in pairs)


def test_policy_preferences_drop_ties_and_add_demonstrations(monkeypatch):
    examples = tasks.make_examples(WORLD, "train", 3, seed=5)
    canned = []
    for ex in examples:  # k = 2 samples per prompt, both correct: a tie, no pair without demonstrations
        canned += [(ex.answer, True, 2), (ex.answer + ".", True, 2)]
    monkeypatch.setattr(preferences, "respond", lambda *args, **kwargs: [Answer(*a) for a in canned])
    labeler = tasks.Labeler(temperature=0.0, ties=True)
    assert policy_preferences(None, None, examples, labeler, k=2) == []  # "equally good": not kept
    pairs = policy_preferences(None, None, examples, labeler, k=2, demonstrations=True)
    # the clean answer is already a sample; the mistake joins and loses to both samples
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        (good, ex.mistake) for ex in examples for good in (ex.answer, ex.answer + ".")]
    assert all(p["gold_chosen"] > p["gold_rejected"] for p in pairs)
    coin = policy_preferences(None, None, examples, tasks.Labeler(temperature=0.0, seed=0), k=2)
    assert len(coin) == 3  # the old labeler flips a coin on the tie instead


def test_best_of_n_picks_the_highest_score_and_never_an_unterminated_answer(monkeypatch):
    examples = tasks.make_examples(WORLD, "test", 2, seed=6)
    wordy = {ex.answer: "Sure! The answer is: " + ex.answer for ex in examples}
    canned = []
    for ex in examples:  # 4 samples per prompt; the 3rd never ended but would score highest
        canned += [(ex.mistake, True, 2), (wordy[ex.answer], True, 8), (ex.answer, False, 9), (ex.answer, True, 2)]
    fake_scores = {**{ex.mistake: 0.0 for ex in examples}, **{w: 0.5 for w in wordy.values()},
                   **{ex.answer: 1.0 for ex in examples}}
    monkeypatch.setattr(evaluate, "respond", lambda *args, **kwargs: [Answer(*a) for a in canned])
    monkeypatch.setattr(evaluate, "score_responses", lambda rm, tok, prompts, responses, **kw:
                        torch.tensor([fake_scores[r] + 5.0 * (i % 4 == 2) for i, r in enumerate(responses)]))
    results = evaluate.best_of_n(None, None, None, examples, ns=(1, 2, 4))
    assert results["bon/1/gold"] == 0.0 and results["bon/1/rm"] == 0.0  # the first sample: the mistake
    assert 0.5 < results["bon/2/gold"] < 0.75 and results["bon/2/rm"] == 0.5  # the wordy one
    assert results["bon/4/gold"] == 1.0 and results["bon/4/rm"] == 1.0  # not the unterminated 3rd
    assert results["bon/4/ended"] == 1.0
    picks = evaluate.bon_respond(None, None, None, [ex.messages for ex in examples], n=4)
    assert [(text, ended) for text, ended, *_ in picks] == [(ex.answer, True) for ex in examples]


def test_a_users_file_is_split_the_same_way_every_time(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(30)))
    train, heldout = preferences.split_file(path, seed=0)
    assert len(train) == 27 and len(heldout) == 3
    assert {p["prompt"][0]["content"] for p in train + heldout} == {f"q{i}" for i in range(30)}
    assert preferences.split_file(path, seed=0) == (train, heldout)


def test_load_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="preferences.py"):
        preferences.load(tmp_path)


def test_load_pairs_makes_the_preferences_only_when_missing(tmp_path, monkeypatch):
    made = []

    def fake_make(cfg, judge=None):  # what make_preferences writes, without a model
        made.append(cfg.out_dir)
        pairs = modelfree_preferences(tasks.make_examples(WORLD, "train", 4, seed=1), random.Random(0))
        for path in preferences.paths(cfg.out_dir).values():
            write_preferences_jsonl(path, pairs)

    monkeypatch.setattr(preferences, "make_preferences", fake_make)
    train, heldout = preferences.load_pairs(str(tmp_path))
    assert made == [str(tmp_path)] and len(train) == len(heldout) == 4
    assert preferences.load_pairs(str(tmp_path)) == (train, heldout) and len(made) == 1  # read, not made again
