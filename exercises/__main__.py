"""
Check an exercise:  python -m exercises gae             (your exercises/gae.py)
                    python -m exercises gae --solution  (the project's own implementation)
                    python -m exercises --list
Exit status 0 when every check passes, 1 otherwise; a failure says which case, what was expected,
what came back and the usual cause.
"""
import importlib
import sys

from exercises.checks import CHECKS, ExerciseFailure, project_functions

NAMES = {"masking": ["collate"], "sft_loss": ["lm_loss"], "bradley_terry": ["bradley_terry_loss"], "gae": ["gae"],
         "ppo_losses": ["policy_loss", "value_loss"], "kl_penalty": ["kl_penalty_rewards"],
         "dpo_loss": ["dpo_loss", "sequence_logprobs"]}


def run(name, solution=False):
    """Run one exercise's checks; returns True when they pass. Prints the verdict."""
    if solution:
        functions = project_functions(name)
    else:
        module = importlib.import_module(f"exercises.{name}")
        functions = [getattr(module, fn) for fn in NAMES[name]]
    try:
        CHECKS[name](*functions)
    except NotImplementedError as e:
        print(f"{name}: not written yet ({e}); edit exercises/{name}.py")
        return False
    except ExerciseFailure as e:
        print(f"{name}: FAILED\n{e}")
        return False
    print(f"{name}: all checks passed")
    return True


def main(argv):
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(__doc__.strip() + "\n\nexercises: " + ", ".join(CHECKS))
        return 0
    name = argv[0]
    if name not in CHECKS:
        print(f"unknown exercise {name!r}; choose one of: {', '.join(CHECKS)}")
        return 2
    return 0 if run(name, solution="--solution" in argv[1:]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
