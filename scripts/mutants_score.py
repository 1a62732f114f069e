#!/usr/bin/env python3
"""Per-file mutation scores from one or more cargo-mutants output directories (`mutants.out`).

    python3 scripts/mutants_score.py target/mutants-out/*/mutants.out

Prints a Markdown table: caught, missed, timeout, unviable and the score, (caught + timeout) / (caught + missed +
timeout) (an unviable mutant does not build and says nothing about the tests). A mutant seen in several
directories counts once, by its last outcome in the order given (so a later run of the missed ones wins).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

KINDS = ("caught", "missed", "timeout", "unviable")


def outcomes(dirs: list[Path]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for d in dirs:
        for kind in KINDS:
            f = d / f"{kind}.txt"
            if f.exists():
                for line in f.read_text().splitlines():
                    if line.strip():
                        seen[line.strip()] = kind
    return seen


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    per_file: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(KINDS, 0))
    for name, kind in outcomes([Path(a) for a in argv]).items():
        per_file[name.split(":", 1)[0]][kind] += 1
    total = dict.fromkeys(KINDS, 0)
    print("| file | caught | missed | timeout | unviable | score |")
    print("|---|---:|---:|---:|---:|---:|")
    for path in sorted(per_file):
        n = per_file[path]
        for k in KINDS:
            total[k] += n[k]
        print(row(path, n))
    print(row("**all**", total))
    return 0


def row(label: str, n: dict[str, int]) -> str:
    viable = n["caught"] + n["missed"] + n["timeout"]
    score = f"{100 * (n['caught'] + n['timeout']) / viable:.1f}%" if viable else "-"
    return f"| {label} | {n['caught']} | {n['missed']} | {n['timeout']} | {n['unviable']} | {score} |"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
