"""Opt-in record of how close each tolerance check came to its bound (the kernel audit).

With ``CNN_TOLERANCE_LOG=/path/file.jsonl`` set, every :func:`tests.helpers.assert_close`
and every passing :func:`cnncore.gradcheck.check_gradient` call in the tests (wrapped in
``tests/conftest.py``) appends one JSON line: the test, the check, the error and the
bound it was held to. ``python -m tests.tolerance_log FILE...`` prints, per test
function and check, the worst ``error / bound`` over all the files, and
``python -m tests.tolerance_log --by-combination FILE...`` the worst per check kind and
file (docs/kernel-audit.md is made that way). Unset, recording costs one environment lookup.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

VARIABLE = "CNN_TOLERANCE_LOG"


def record(check: str, error: float, bound: float) -> None:
    """Append ``{test, check, error, bound}`` to the log, if one is configured."""
    path = os.environ.get(VARIABLE)
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
    line = {"test": test, "check": check, "error": error, "bound": bound}
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")


def _ratio(error: float, bound: float) -> float:
    if bound > 0:
        return error / bound
    return 0.0 if error == 0 else float("inf")


def worst(paths: list[Path]) -> dict[tuple[str, str], tuple[float, float, float, str, str]]:
    """Per (test function, check): (ratio, error, bound, test id, file) of the worst ratio."""
    found: dict[tuple[str, str], tuple[float, float, float, str, str]] = {}
    for path in paths:
        for text in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(text)
            key = (row["test"].split("[", 1)[0], row["check"])
            ratio = _ratio(row["error"], row["bound"])
            if key not in found or ratio > found[key][0]:
                found[key] = (ratio, row["error"], row["bound"], row["test"], path.stem)
    return found


def by_combination(paths: list[Path]) -> None:
    """Print a Markdown table: per check kind, the worst ``error / bound`` in each file."""
    names = [path.stem for path in paths]
    cells: dict[str, dict[str, float]] = {}
    for path in paths:
        for (_, check), (ratio, *_rest) in worst([path]).items():
            row = cells.setdefault(check, {})
            row[path.stem] = max(ratio, row.get(path.stem, 0.0))
    print("| check | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for check, row in sorted(cells.items()):
        print(f"| {check} | " + " | ".join(f"{row.get(n, float('nan')):.3f}" for n in names) + " |")


def main(paths: list[str]) -> None:
    """Print a Markdown table: check, worst error, its bound, error/bound, where, combination."""
    print(
        "| test function | check | worst error | bound | error/bound | worst case | combination |"
    )
    print("|---|---|---|---|---|---|---|")
    for (function, check), (ratio, error, bound, test, combo) in sorted(
        worst([Path(p) for p in paths]).items()
    ):
        case = test.split("[", 1)[1].rstrip("]") if "[" in test else ""
        name = function.removeprefix("tests/")
        print(
            f"| `{name}` | {check} | {error:.3g} | {bound:.3g} | {ratio:.3f} | {case} | {combo} |"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--by-combination"]:
        by_combination([Path(p) for p in sys.argv[2:]])
    else:
        main(sys.argv[1:])
