"""Compare two pipeline report.json files: every model, every metric, and the transcripts.

A refactor that must change no behaviour is checked with it, e.g. on the quick preset:

  git stash; python pipeline.py --quick --fresh --name before; git stash pop
  python pipeline.py --quick --fresh --name after
  python tests/compare_reports.py runs/before/report.json runs/after/report.json

Stage times and the run's name and folders differ between any two runs and are not compared.
Exit status 0 when everything else is equal, 1 otherwise (each difference is printed).
"""

import json
import sys


def differences(a, b, path=""):
    """Paths at which two JSON values differ (numbers compared exactly)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in the {'first' if k in a else 'second'}" for k in set(a) ^ set(b)]
        for key in sorted(set(a) & set(b)):
            out += differences(a[key], b[key], f"{path}/{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def main(first, second):
    reports = [json.load(open(path)) for path in (first, second)]
    found = []
    for key in ("models", "transcripts", "judge", "rlaif_labels", "plots"):
        found += differences(reports[0].get(key), reports[1].get(key), key)
    for line in found:
        print(line)
    n_metrics = sum(len(row) for row in reports[0]["models"].values())
    print(f"{len(found)} differences ({len(reports[0]['models'])} models, {n_metrics} per-model entries, "
          f"{len(reports[0]['transcripts'])} transcripts compared)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
