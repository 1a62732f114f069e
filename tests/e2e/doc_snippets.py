"""Reading the project's markdown for tests/e2e/test_docs.py: fenced blocks with their roles, placeholders, tables,
headings and links, and the few facts of the Rust source the docs restate (configuration fields, defaults,
refusals, modules). Standard library only; the markers and placeholders are described in docs/README.md.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The markdown the project ships: the README, docs/, and the READMEs beside what they describe.
DOC_GLOBS = ["README.md", "docs/**/*.md", "deploy/**/README.md", "bench/README.md", "examples/**/README.md"]

# The roles a fenced block may carry, by language; `None`: a block that is only shown, never run.
ROLES = {
    # jwt-authn and route-metadata: the parts of docs/coming-from-litellm.md's examples that tests/e2e/test_parity.py
    # puts into the gateway beside their plugin-config blocks (a provider of Envoy's jwt_authn, a route's metadata).
    "yaml": {"envoy", "istio", "jwt-authn", "route-metadata", None},
    "json": {"plugin-config", "discovery", "jwks"},
    "python": {"verifier", "server"},
    "text": {"envoy-log", None},
}

# The example issuer every snippet uses, replaced by a test gateway's where a snippet talks to one.
EXAMPLE_ISSUER = "https://mcp-gw.example.com"
PLACEHOLDER = re.compile(r"<[^<>\n]+>")


def doc_files() -> list:
    seen = []
    for pattern in DOC_GLOBS:
        for path in sorted(REPO.glob(pattern)):
            if "node_modules" in path.parts or path in seen:
                continue
            seen.append(path)
    return seen


@dataclass
class Block:
    """One fenced code block."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    roles: list
    attrs: dict
    text: str

    @property
    def role(self):
        return self.roles[0] if self.roles else None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


FENCE = re.compile(r"^(\s*)```(.*)$")


def blocks_of(path: Path) -> list:
    lines = path.read_text().splitlines()
    out = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, info = m.group(1), m.group(2).strip()
        start = i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].startswith(indent + "```") and lines[i].strip() == "```"):
            body.append(lines[i])
            i += 1
        i += 1
        words = shlex.split(info) if info else []
        lang = words[0] if words else ""
        roles = [w for w in words[1:] if "=" not in w]
        attrs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        text = textwrap.dedent("\n".join(body)) + "\n"
        out.append(Block(path, start + 1, lang, roles, attrs, text))
    return out


def all_blocks() -> list:
    return [b for path in doc_files() for b in blocks_of(path)]


def blocks(lang: str, role: str) -> list:
    return [b for b in all_blocks() if b.lang == lang and b.role == role]


def fill(text: str, values: dict, where: str) -> str:
    """Replaces every placeholder with its value; a placeholder without one is an error naming it."""
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    left = PLACEHOLDER.findall(text)
    if left:
        raise AssertionError(f"{where}: placeholder(s) {left} have no test value (PLACEHOLDERS in test_docs.py)")
    return text


# ----------------------------------------------------------------------------------------------------------------
# markdown structure
# ----------------------------------------------------------------------------------------------------------------
def without_code(text: str) -> str:
    """The text with fenced blocks blanked out (links and headings inside code do not count)."""
    out, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            out.append("")
            continue
        out.append("" if in_fence else line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set:
    found, counts = set(), {}
    for line in without_code(path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if m:
            base = slug(m.group(1))
            n = counts.get(base, 0)
            found.add(base if n == 0 else f"{base}-{n}")
            counts[base] = n + 1
    return found


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(path: Path) -> list:
    """(target, fragment) of every relative markdown link outside code."""
    out = []
    for target in LINK.findall(without_code(path.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue
        file_part, _, fragment = target.partition("#")
        out.append((file_part, fragment))
    return out


def tables(text: str) -> list:
    """Every markdown table as (header cells, [row cells])."""
    lines = without_code(text).splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-:| ]+\|$", lines[i + 1].strip()):
            header = split_row(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(split_row(lines[i]))
                i += 1
            found.append((header, rows))
        else:
            i += 1
    return found


def split_row(line: str) -> list:
    """Cells of a table row; a `|` inside backticks does not split."""
    cells, cell, in_code = [], "", False
    for ch in line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]:
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
    cells.append(cell.strip())
    return cells


def table_with(path: Path, first_header: str) -> list:
    """The rows of the table in `path` whose first column header is `first_header`."""
    for header, rows in tables(path.read_text()):
        if header and header[0] == first_header:
            return [dict(zip(header, row)) for row in rows]
    raise AssertionError(f"{path.relative_to(REPO)}: no table with first column {first_header!r}")


def code_spans(cell: str) -> list:
    return re.findall(r"`([^`]+)`", cell)


# ----------------------------------------------------------------------------------------------------------------
# the Rust source the docs restate
# ----------------------------------------------------------------------------------------------------------------
SRC = REPO / "src"


def _struct_fields(text: str, name: str) -> list:
    m = re.search(rf"struct {name}\s*\{{(.*?)\n\}}", text, re.S)
    assert m, f"struct {name} not found"
    return re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(\w+):\s*([^,\n]+),", m.group(1), re.M)


def config_fields() -> list:
    """Every field an operator can write: `RawConfig`'s, with the sub-objects that refuse unknown fields
    (`token_cache`, `identity`) expanded as `parent.child`."""
    config_dir = SRC / "config"
    structs = {}
    for path in config_dir.glob("*.rs"):
        text = path.read_text()
        for m in re.finditer(r"#\[serde\(deny_unknown_fields\)\]\s*pub(?:\([^)]*\))?\s+struct (\w+)", text):
            structs[m.group(1)] = _struct_fields(text, m.group(1))
    assert "RawConfig" in structs, "RawConfig not found in src/config/"
    out = []
    for name, ty in structs["RawConfig"]:
        out.append(name)
        inner = re.sub(r"^Option<(.*)>$", r"\1", ty.strip())
        if inner in structs:
            out.extend(f"{name}.{child}" for child, _ in structs[inner])
    return out


def defaults() -> dict:
    """The constants of src/config/defaults.rs, evaluated (numbers, strings, bools)."""
    out = {}
    text = (SRC / "config" / "defaults.rs").read_text()
    for name, ty, expr in re.findall(r"pub const (\w+): ([^=]+)= ([^;]+);", text):
        expr = expr.strip()
        if expr.startswith('"'):
            out[name] = expr.strip('"')
        elif expr in ("true", "false"):
            out[name] = expr == "true"
        elif re.fullmatch(r"[\d_. *<()+]+", expr):
            out[name] = eval(expr.replace("_", ""), {"__builtins__": {}})  # noqa: S307 - integer arithmetic from our own source
    return out


def _match_arms(text: str, fn: str) -> list:
    """(variant keys, value) of the one-line arms of `pub fn <fn>(&self)` in src/refusal.rs. A key is `Variant`
    or `Body/Inner` for `Refusal::Body(McpError::Inner..)`; `_` is the default arm."""
    m = re.search(rf"pub fn {fn}\(&self\)[^{{]*\{{\s*match self \{{(.*?)\n        \}}\n    \}}", text, re.S)
    assert m, f"Refusal::{fn} not found"
    body = re.sub(r"=>\s*\{\s*(-?\d+|\"[a-z_]+\")\s*\}", r"=> \1,", m.group(1))  # `=> { -32603 }`
    body = re.sub(r"\|\s*\n\s*", "| ", body)  # a pattern continued on the next line
    arms = []
    for line in body.splitlines():
        arm = re.match(r"^\s*(.+?)\s*=>\s*(-?\d+|\"[a-z_]+\"),?\s*$", line)
        if not arm:
            continue
        lhs, value = arm.groups()
        keys = ["_"] if lhs == "_" else [
            f"{v}/{inner}" if inner else v for v, inner in re.findall(r"Refusal::(\w+)(?:\(McpError::(\w+))?", lhs)]
        arms.append((keys, value.strip('"')))
    return arms


def refusals() -> dict:
    """reason -> (HTTP status, JSON-RPC code), as src/refusal.rs computes them."""
    text = (SRC / "refusal.rs").read_text()
    status, code = _match_arms(text, "status"), _match_arms(text, "code")

    def lookup(arms, key):
        variant = key.split("/")[0]
        for keys, value in arms:
            if key in keys or variant in keys:
                return int(value)
        for keys, value in arms:
            if keys == ["_"]:
                return int(value)
        raise AssertionError(f"no arm for {key}")

    out, seen = {}, set()
    for keys, reason in _match_arms(text, "reason"):
        for key in keys:
            out[reason] = (lookup(status, key), lookup(code, key))
            seen.add(key.split("/")[0])
    enum = re.search(r"pub enum Refusal \{(.*?)\n\}", text, re.S)
    variants = set(re.findall(r"^    (\w+)\b", enum.group(1), re.M)) if enum else set()
    assert variants and variants == seen, (
        f"src/refusal.rs: read the reasons of {sorted(seen)}, but the enum has {sorted(variants)} "
        "(doc_snippets.refusals() cannot read an arm of Refusal::reason())")
    return out


def modules() -> list:
    """Every module in src/ as a path: `request/gate`, `crypto/rsa/crt`, `identity`; folders as `crypto/`."""
    out = []
    for path in sorted(SRC.rglob("*.rs")):
        rel = path.relative_to(SRC).with_suffix("")
        if rel.name == "lib":
            continue
        if rel.name == "mod":
            out.append(rel.parent.as_posix() + "/")
        else:
            out.append(rel.as_posix())
    return out


@dataclass
class Gathered:
    """Problems found while walking the docs, reported together."""

    problems: list = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def check(self) -> None:
        assert not self.problems, "\n  " + "\n  ".join(self.problems)
