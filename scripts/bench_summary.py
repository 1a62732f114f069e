#!/usr/bin/env python3
"""The benchmark numbers the docs quote, generated from bench/latest.md, and whether that run is still current.

    python3 scripts/bench_summary.py --write    # rewrite the generated blocks in README.md and bench/README.md
    python3 scripts/bench_summary.py --check    # exit 1 if a generated block differs from bench/latest.md
    python3 scripts/bench_summary.py --status   # "current: ..." or "stale: src/ changed since <commit> ..."

`make bench` runs --write after the benchmark; `make bench-status` runs --status; tests/e2e/test_docs.py runs the
check and reports the status. The docs quote numbers from bench/latest.md only inside these generated blocks
(between `<!-- bench:NAME begin -->` and `<!-- bench:NAME end -->`), so a quoted number cannot drift from the run
it names. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LATEST = REPO / "bench" / "latest.md"
WASM = REPO / "target" / "wasm32-wasip1" / "release" / "mcp_jwt_signer.wasm"
# What the numbers depend on: the filter's code and build, the Envoy config every row uses, the bench itself.
MEASURED_INPUTS = ["src", "Cargo.toml", "Cargo.lock", ".cargo", "envoy.yaml", "scripts/bench.py", "scripts/bench.lua",
                   "scripts/litellm_mint.py", "bench/requirements-litellm.txt"]
# Which generated block goes into which file.
BLOCKS = {"summary": REPO / "README.md", "report": REPO / "bench" / "README.md"}


class Report:
    """The parts of bench/latest.md the docs quote."""

    def __init__(self, text: str):
        title = re.search(r"^# .*benchmark, (.+)$", text, re.M)
        code = re.search(r"^- Code: git (\S+)( \(uncommitted changes in tracked files\))?; filter `[^`]+` sha256 "
                         r"([0-9a-f]+)", text, re.M)
        machine = re.search(r"^- Machine: (.+)$", text, re.M)
        envoy = re.search(r"^- Envoy \S+/(\d+\.\d+\.\d+)/", text, re.M)
        if not (title and code and machine and envoy):
            raise ValueError("bench/latest.md: missing its title, Machine, Envoy or Code line")
        self.date = title.group(1)
        self.commit = code.group(1)
        self.dirty = bool(code.group(2))
        self.wasm_sha256 = code.group(3)
        self.machine = machine.group(1)
        self.envoy = envoy.group(1)
        self.rows = {}  # (row name, concurrency) -> {column: cell}
        self.mints = {}  # (algorithm, concurrency) -> {column: cell}
        for header, body in _tables(text):
            if header[:2] == ["row", "Envoy `--concurrency`"]:
                for cells in body:
                    self.rows[(cells[0], int(cells[1]))] = dict(zip(header, cells))
            elif header[:2] == ["algorithm", "row"]:
                for cells in body:
                    m = re.search(r"--concurrency (\d+)", cells[1])
                    if m:  # (a run without cold rows has a placeholder row)
                        self.mints[(cells[0], int(m.group(1)))] = dict(zip(header, cells))
        if not self.rows or not self.mints:
            raise ValueError("bench/latest.md: the results table or the mint table is missing")
        # Since the LiteLLM comparison (optional, so that older reports still parse): its line, its column.
        litellm = re.search(r"^LiteLLM MCPJWTSigner \(the reference implementation\): litellm (\S+) .*$", text, re.M)
        self.litellm_version = litellm.group(1) if litellm else None
        self.litellm_line = litellm.group(0) if litellm else None
        # The shared-cache table (header starting "build", "Envoy `--concurrency`", "users (K)"), raw, or None.
        self.shared_table = next((raw for raw, (header, _) in zip(_tables(text, raw=True), _tables(text))
                                  if header[:3] == ["build", "Envoy `--concurrency`", "users (K)"]), None)

    def row(self, name: str, concurrency: int) -> dict:
        for (row, c), cells in self.rows.items():
            if c == concurrency and row.startswith(name):
                return cells
        raise KeyError(f"bench/latest.md has no row starting {name!r} at --concurrency {concurrency}")

    def mint(self, algorithm: str, concurrency: int) -> dict:
        return self.mints[(algorithm, concurrency)]


def _tables(text: str, raw: bool = False):
    """(header cells, [row cells]) of every markdown table in `text`; with `raw`, the table's lines as written."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-:| ]+\|$", lines[i + 1]):
            start = i
            header = _cells(lines[i])
            body = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                body.append(_cells(lines[i]))
                i += 1
            yield "\n".join(lines[start:i]) if raw else (header, body)
        else:
            i += 1


def _cells(line: str) -> list:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _num(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("x"))


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x"


ALGORITHMS = ("RS256", "ES256", "EdDSA")


def provenance(r: Report) -> str:
    return (f"`make bench`, {r.date}, git `{r.commit}`{' (with uncommitted changes)' if r.dirty else ''}, filter "
            f"sha256 `{r.wasm_sha256}…`; {r.machine}; Envoy {r.envoy}")


def speedups(r: Report, concurrency: int) -> str:
    rs_mint = _num(r.mint("RS256", concurrency)["mint P50 µs"])
    rs_rps = _num(r.row("filter cold RS256", concurrency)["requests/s"])
    parts = []
    for alg in ALGORITHMS[1:]:
        mint = _ratio(rs_mint, _num(r.mint(alg, concurrency)["mint P50 µs"]))
        rps = _ratio(_num(r.row(f"filter cold {alg}", concurrency)["requests/s"]), rs_rps)
        parts.append(f"{alg} mints {mint} faster than RS256 (P50) and gives {rps} its cold throughput")
    return "; ".join(parts)


def summary_block(r: Report) -> str:
    """The README's few lines: what the filter costs, at one worker."""
    base, warm = r.row("baseline", 1), r.row("filter warm RS256", 1)
    lines = [
        f"Measured by {provenance(r)}; one Envoy worker, closed-loop load:",
        "",
        "| | requests/s | vs plain Envoy | Envoy CPU µs/request | mint P50 µs |",
        "|---|---:|---:|---:|---:|",
        f"| plain Envoy | {base['requests/s']} | 1.00x | {base['Envoy CPU µs/request']} | - |",
        f"| filter, cached token | {warm['requests/s']} | {warm['req/s vs baseline']} | "
        f"{warm['Envoy CPU µs/request']} | - |",
    ]
    for alg in ALGORITHMS:
        row = r.row(f"filter cold {alg}", 1)
        lines.append(f"| filter, new token every request, {alg} | {row['requests/s']} | {row['req/s vs baseline']} | "
                     f"{row['Envoy CPU µs/request']} | {r.mint(alg, 1)['mint P50 µs']} |")
    rs = r.mint("RS256", 1)
    litellm_p50 = rs.get("LiteLLM MCPJWTSigner P50 µs", "")
    if r.litellm_version and litellm_p50 and not litellm_p50.startswith("n/a"):
        lines.append(f"| LiteLLM {r.litellm_version} `MCPJWTSigner` (the reference), RS256: one Python call, no proxy "
                     f"| - | - | - | {litellm_p50} |")
    lines += ["", speedups(r, 1) + "."]
    if r.litellm_version and litellm_p50 and not litellm_p50.startswith("n/a"):
        ratio = _num(rs["LiteLLM P50 / filter P50"])
        lines[-1] += (f" LiteLLM's signer takes {ratio:.2f}x the filter's RS256 mint time (P50, same key, same run; "
                      f"above 1: the filter mints faster).")
    return "\n".join(lines)


def report_block(r: Report) -> str:
    """bench/README.md's copy of the run: both tables as the bench wrote them, and the targets."""
    tables = list(_tables(LATEST.read_text(), raw=True))
    warm1, warm2 = r.row("filter warm RS256", 1), r.row("filter warm RS256", 2)
    rs = r.mint("RS256", 1)
    es_x = _num(r.mint("RS256", 1)["mint P50 µs"]) / _num(r.mint("ES256", 1)["mint P50 µs"])
    ed_x = _num(r.mint("RS256", 1)["mint P50 µs"]) / _num(r.mint("EdDSA", 1)["mint P50 µs"])
    targets = [
        "| target | reached (`--concurrency` 1 / 2) | |",
        "|---|---|---|",
        f"| warm throughput >= 0.9x plain Envoy, p99 <= 1.2x | {warm1['req/s vs baseline']} / "
        f"{warm2['req/s vs baseline']}, p99 {warm1['p99 vs baseline']} / {warm2['p99 vs baseline']} | "
        f"{'met' if _num(warm1['req/s vs baseline']) >= 0.9 and _num(warm1['p99 vs baseline']) <= 1.2 else 'not met'} |",
        f"| cold RS256 >= 500 mints/s per worker (<= 2 ms) | {rs['mints/s per worker (1e6/P50)']} mints/s "
        f"({rs['mint P50 µs']} µs P50) | {'met' if _num(rs['mints/s per worker (1e6/P50)']) >= 500 else 'not met'} |",
        f"| ES256 cold >= 10x RS256 cold (mint P50) | ES256 {es_x:.1f}x, EdDSA {ed_x:.1f}x | "
        f"{'met' if es_x >= 10 else 'not met'} |",
    ]
    extra = []
    if r.litellm_line:
        extra += ["", r.litellm_line]
    if r.shared_table:
        extra += ["", "Token cache shared by the workers (`shared` rows):", "", r.shared_table]
    return "\n".join([f"Run: {provenance(r)}.", "", tables[0], "", "Mint cost inside Envoy (cold rows):", "",
                      *tables[1:2], "", speedups(r, 1) + " (`--concurrency 1`).", "", *targets, *extra])


GENERATORS = {"summary": summary_block, "report": report_block}


def expected_blocks() -> dict:
    r = Report(LATEST.read_text())
    return {name: GENERATORS[name](r) for name in BLOCKS}


def _block_re(name: str):
    return re.compile(rf"(<!-- bench:{name} begin[^>]*-->)(.*?)(<!-- bench:{name} end -->)", re.S)


def current_block(name: str) -> str | None:
    """The text between the block's markers (without the newline after `begin` and before `end`)."""
    path = BLOCKS[name]
    m = _block_re(name).search(path.read_text()) if path.exists() else None
    return m.group(2)[1:-1] if m else None


def write() -> None:
    for name, text in expected_blocks().items():
        path = BLOCKS[name]
        doc = path.read_text() if path.exists() else ""
        if not _block_re(name).search(doc):
            raise SystemExit(f"{path.relative_to(REPO)}: no `<!-- bench:{name} begin -->` ... end block")
        path.write_text(_block_re(name).sub(lambda m: m.group(1) + "\n" + text + "\n" + m.group(3), doc))


def check() -> list:
    """Names of the generated blocks that differ from what bench/latest.md gives."""
    return [name for name, text in expected_blocks().items() if current_block(name) != text]


def _git(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)


def status() -> str:
    """One line: whether the code and method measured in bench/latest.md are what this checkout holds."""
    r = Report(LATEST.read_text())
    if r.dirty:
        return (f"unknown: bench/latest.md was measured at {r.commit} with uncommitted changes; run `make bench` on "
                "a clean checkout")
    if _git("cat-file", "-e", f"{r.commit}^{{commit}}").returncode != 0:
        return f"unknown: commit {r.commit} of bench/latest.md is not in this clone"
    committed = _git("log", "--format=%h", f"{r.commit}..HEAD", "--", *MEASURED_INPUTS).stdout.split()
    changed = [path for path in MEASURED_INPUTS
               if _git("diff", "--quiet", r.commit, "--", path).returncode != 0]  # commits and working tree
    wasm = ""
    if WASM.exists():
        built = hashlib.sha256(WASM.read_bytes()).hexdigest()[: len(r.wasm_sha256)]
        wasm = "; the built .wasm is the measured one" if built == r.wasm_sha256 else \
            f"; the built .wasm (sha256 {built}…) is not the measured one ({r.wasm_sha256}…)"
    if changed:
        commits = ""
        if committed:
            commits = (f" in {len(committed)} commit{'s' if len(committed) != 1 else ''} "
                       f"({', '.join(committed[:5])}{', ...' if len(committed) > 5 else ''})")
        names = ", ".join(p + "/" if (REPO / p).is_dir() else p for p in changed)
        return f"stale: {names} changed since {r.commit}{commits}{wasm}. Run `make bench` to measure this code."
    return f"current: no measured input ({', '.join(MEASURED_INPUTS)}) changed since {r.commit}{wasm}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true", help="rewrite the generated blocks from bench/latest.md")
    g.add_argument("--check", action="store_true", help="exit 1 if a generated block differs from bench/latest.md")
    g.add_argument("--status", action="store_true", help="say whether bench/latest.md measured this code")
    args = p.parse_args(argv)
    if args.write:
        write()
        print(status())
    elif args.check:
        differ = check()
        if differ:
            print(f"generated benchmark blocks out of date: {', '.join(differ)}; run "
                  "`python3 scripts/bench_summary.py --write`", file=sys.stderr)
            return 1
    else:
        print(status())
    return 0


if __name__ == "__main__":
    sys.exit(main())
