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

The checks live in five files: harness.py (what every check uses), sft_and_model.py, ppo_rollout.py,
ppo_update.py and preference_losses.py; this file is the registry.
"""

from exercises.checks.harness import ExerciseFailure, StudentError, last_case  # noqa: F401  (the runner's names)
from exercises.checks.ppo_rollout import check_gae, check_kl_penalty, check_response_logprobs, check_rollout_advantages
from exercises.checks.ppo_update import check_adaptive_kl, check_ppo_losses
from exercises.checks.preference_losses import check_bradley_terry, check_dpo_loss
from exercises.checks.sft_and_model import (check_causal_mask, check_kv_cache_step, check_masking, check_render_chat,
                                            check_sft_loss)


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
