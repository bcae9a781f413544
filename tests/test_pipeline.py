"""The quick pipeline end to end: every stage, the report files, skipping finished stages, restarts."""

import json
import os
import shutil

import pytest

import dpo
import pipeline
import ppo
import pretrain
import reward
import sft

SPLITS = {"test", "heldout_phrasing", "heldout_people"}
ROW_KEYS = {"accuracy", "gold_greedy", "gold_sampled", "kl_to_sft", "mean_length", "ended", "rm_score"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result, text = pipeline.main(pipeline.PipelineConfig(quick=True, runs_dir=str(runs), name="q", device="cpu"))
    return runs, result, text


def test_report_json_has_the_documented_shape(quick_run):
    runs, result, text = quick_run
    with open(runs / "q" / "report.json") as f:
        report = json.load(f)
    assert set(report["models"]) == {"base", "sft", "bon16", "ppo", "dpo"}
    for name, row in report["models"].items():
        assert ROW_KEYS <= set(row), name
        assert set(row["accuracy"]) == SPLITS
        assert all(0.0 <= v <= 1.0 for v in row["accuracy"].values())
        assert 0.0 <= row["ended"] <= 1.0
    assert report["models"]["bon16"]["gold_greedy"] is None  # best-of-N only samples
    assert set(report["stage_seconds"]) == {"tokenizer", "pretrain", "sft", "preferences", "reward", "ppo", "dpo",
                                            "eval"}
    assert all(s >= 0 for s in report["stage_seconds"].values())
    assert report["config"]["preset"] == "quick"
    assert (runs / "q" / "report.md").read_text() == text
    assert "| sft |" in text and "| dpo |" in text
    for plot in report["plots"]:
        assert (runs / "q" / "plots" / plot).stat().st_size > 0


def test_a_second_run_skips_finished_stages(quick_run, monkeypatch, tmp_path):
    runs, _, _ = quick_run
    shutil.copytree(runs / "q", tmp_path / "q")

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for module in (pretrain, sft, reward, ppo, dpo):
        monkeypatch.setattr(module, "train", must_not_run)
    monkeypatch.setattr(pretrain, "get_tokenizer", must_not_run)
    result, _ = pipeline.main(pipeline.PipelineConfig(quick=True, runs_dir=str(tmp_path), name="q", device="cpu"))
    assert set(result["models"]) == {"base", "sft", "bon16", "ppo", "dpo"}


def test_an_interrupted_stage_restarts_cleanly(quick_run, monkeypatch, tmp_path):
    runs, _, _ = quick_run
    shutil.copytree(runs / "q", tmp_path / "q")
    os.remove(tmp_path / "q" / "dpo" / "done.json")  # DPO never finished...
    real_train = dpo.train

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(dpo, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):  # ...and is interrupted again
        pipeline.main(pipeline.PipelineConfig(quick=True, runs_dir=str(tmp_path), name="q", device="cpu"))
    assert not (tmp_path / "q" / "dpo" / "done.json").exists()

    calls = []
    monkeypatch.setattr(dpo, "train", lambda cfg: calls.append(cfg) or real_train(cfg))
    monkeypatch.setattr(ppo, "train", lambda *a, **k: pytest.fail("PPO had finished"))
    pipeline.main(pipeline.PipelineConfig(quick=True, runs_dir=str(tmp_path), name="q", device="cpu"))
    assert len(calls) == 1 and calls[0].resume  # only the unfinished stage ran, from its checkpoint if any
    assert (tmp_path / "q" / "dpo" / "done.json").exists()


def test_fresh_and_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        pipeline.main(pipeline.PipelineConfig(preset="huge", runs_dir=str(tmp_path)))
