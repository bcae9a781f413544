"""The exercise checker: it passes the project's implementations and fails known-wrong ones, saying why."""
import pytest
import torch
import torch.nn.functional as F

import ppo
from exercises import __main__ as checker
from exercises.checks import CHECKS, IGNORE_INDEX, ExerciseFailure, project_functions


@pytest.mark.parametrize("name", list(CHECKS))
def test_the_project_passes_every_exercise(name, capsys):
    assert checker.run(name, solution=True)
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(CHECKS))
def test_an_untouched_stub_is_reported_as_not_written(name, capsys):
    assert not checker.run(name)
    assert f"edit exercises/{name}.py" in capsys.readouterr().out


def test_cli_exit_status(capsys):
    assert checker.main(["gae", "--solution"]) == 0 and checker.main(["gae"]) == 1
    assert checker.main(["nope"]) == 2 and "unknown exercise" in capsys.readouterr().out


def fails_with(name, functions, hint):
    with pytest.raises(ExerciseFailure) as failure:
        CHECKS[name](*functions)
    assert hint in str(failure.value), str(failure.value)


# ----------------------------------------------------------------------------- known-wrong implementations
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


def lm_loss_over_all_positions(logits, targets, reduction="mean"):
    total = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return total / targets.numel() if reduction == "mean" else total  # wrong: divides by T, not by the supervised


def gae_without_lambda(rewards, values, response_mask, gamma=1.0, lam=0.95):
    return ppo.gae(rewards, values, response_mask, gamma, lam=1.0)


def policy_loss_without_clip(logprobs, old_logprobs, advantages, response_mask, cliprange=0.2):
    return ppo.masked_mean(-advantages * (logprobs - old_logprobs).exp(), response_mask), {}


def value_loss_without_clip(values, old_values, returns, response_mask, cliprange_value=0.2):
    return 0.5 * ppo.masked_mean((values - returns) ** 2, response_mask), 0.0


def kl_score_on_last_column(logprobs, ref_logprobs, scores, response_mask, kl_coef):
    non_score = -kl_coef * (logprobs - ref_logprobs) * response_mask
    rewards = non_score.clone()
    rewards[:, -1] += scores  # wrong: the last column is a pad in padded rows
    return rewards, non_score


def sequence_logprobs_mean(logits, targets, loss_mask):
    _, sequence_logprobs = project_functions("dpo_loss")
    return sequence_logprobs(logits, targets, loss_mask) / loss_mask.sum(dim=-1)  # wrong: a mean


def test_known_wrong_implementations_fail_with_the_cause():
    fails_with("masking", [collate_mask_shifted_by_one], "a mask shifted by one")
    fails_with("sft_loss", [lm_loss_over_all_positions], "divide by how many are left")
    fails_with("gae", [gae_without_lambda], "you left out lambda")
    policy, value = project_functions("ppo_losses")
    fails_with("ppo_losses", [policy_loss_without_clip, value], "(you did not clip)")
    fails_with("ppo_losses", [policy, value_loss_without_clip], "(you did not clip)")
    fails_with("kl_penalty", [kl_score_on_last_column], "you put it on the last column")
    dpo_loss, _ = project_functions("dpo_loss")
    fails_with("dpo_loss", [dpo_loss, sequence_logprobs_mean], "not the mean")
    fails_with("bradley_terry", [lambda c, r, margin=0.0: -F.logsigmoid(r - c - margin)], "expected")  # sign flipped
