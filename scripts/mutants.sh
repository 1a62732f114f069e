#!/usr/bin/env bash
# `make mutants` / `make mutants-all`: cargo-mutants over the crate's pure modules, natively (docs/testing.md,
# "Mutation testing"). Installs its pinned cargo-mutants from crates.io into target/tools on first use.
#
#   make mutants                          mutants in the code changed against $MUTANTS_BASE (default main),
#                                         committed or not (cargo-mutants --in-diff)
#   make mutants MUTANTS_FILES="src/cache.rs src/mcp/*.rs"   mutants of these files (globs, as cargo-mutants -f)
#   make mutants-all                      every mutant of the crate (hours on a 2-core machine)
#   MUTANTS_JOBS=2                        two trees side by side, each testing one shard (default 1)
#   MUTANTS_ARGS="--re cache_key"         more cargo-mutants options, split on whitespace (e.g. --re / --exclude-re)
#
# The mutated code never touches this checkout: each job tests mutants in place in its own copy of the tracked
# files under target/mutants-tree-<n>/, whose target directory stays warm between runs (a copy made fresh would
# rebuild every dependency). Results: target/mutants-out/<n>/mutants.out/{caught,missed,timeout,unviable}.txt;
# the summary line per job is printed at the end. Exit status: 0 when no mutant was missed or timed out.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=27.1.0
TOOLS=target/tools
BIN=$PWD/$TOOLS/bin/cargo-mutants
MODE=${1:-diff}
JOBS=${MUTANTS_JOBS:-1}
BASE=${MUTANTS_BASE:-main}

# The binary is a cargo subcommand: `cargo-mutants mutants --version` (plain `--version` is refused).
installed=$([ -x "$BIN" ] && "$BIN" mutants --version 2>/dev/null || true)
if [ "$installed" != "cargo-mutants $VERSION" ]; then
    echo "installing cargo-mutants $VERSION into $TOOLS (once; a few minutes)"
    cargo install --locked --force --version "$VERSION" cargo-mutants --root "$TOOLS"
fi

# What to mutate, and which tests to run. Unit tests only (`--lib`) unless everything is mutated; crypto/ is a
# leaf (tests/module_graph.rs), so its own slow unit tests cannot catch a mutant outside it and are skipped then.
select=()
test_args=(--lib)
touches_crypto=no
case "$MODE" in
    all)
        test_args=(--tests)
        touches_crypto=yes
        ;;
    diff)
        if [ -n "${MUTANTS_FILES:-}" ]; then
            for f in $MUTANTS_FILES; do
                select+=(-f "$f")
                # Globs that can reach src/crypto/ keep crypto's tests.
                case "$f" in src/crypto* | src/\* | src/\*\* | \**) touches_crypto=yes ;; esac
            done
        else
            mkdir -p target
            diff_file=$PWD/target/mutants.diff
            merge_base=$(git merge-base "$BASE" HEAD)
            git diff "$merge_base" -- 'src/*.rs' >"$diff_file"
            if [ ! -s "$diff_file" ]; then
                echo "no change to src/ against $BASE: nothing to mutate (MUTANTS_FILES=... or make mutants-all)"
                exit 0
            fi
            select+=(--in-diff "$diff_file")
            git diff --name-only "$merge_base" -- 'src/crypto/*' | grep -q . && touches_crypto=yes
            echo "mutating the lines changed against $BASE ($merge_base):"
            git diff --stat "$merge_base" -- 'src/*.rs' | sed 's/^/  /'
        fi
        ;;
    *)
        echo "usage: $0 [diff|all]" >&2
        exit 2
        ;;
esac
[ "$touches_crypto" = no ] && test_args+=(-- --skip crypto::)

# One tree per job: the tracked and untracked-but-not-ignored files (its target/ stays, so dependencies stay built).
sync_tree() {
    local tree=$1
    mkdir -p "$tree"
    find "$tree" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
    git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$tree"
    # The crate's own sources get a fresh mtime: cargo-mutants restores a mutated file after each mutant, and a
    # copied file's older mtime could then leave the last mutant's build in place as the baseline (seen: a
    # baseline test failing with a mutant's behaviour). The dependencies stay built.
    find "$tree/src" -name '*.rs' -exec touch {} +
}

pids=()
for ((job = 0; job < JOBS; job++)); do
    tree=target/mutants-tree-$job
    out=$PWD/target/mutants-out/$job
    sync_tree "$tree"
    rm -rf "$out" && mkdir -p "$out"
    shard=()
    [ "$JOBS" -gt 1 ] && shard=(--shard "$job/$JOBS")
    extra=()
    read -ra extra <<<"${MUTANTS_ARGS:-}" # split on whitespace: no quoting inside MUTANTS_ARGS
    (cd "$tree" && "$BIN" mutants --in-place ${shard[@]+"${shard[@]}"} -o "$out" ${select[@]+"${select[@]}"} \
        ${extra[@]+"${extra[@]}"} \
        -- "${test_args[@]}") >"$out/run.log" 2>&1 &
    pids+=($!)
    echo "job $job: $tree, log $out/run.log"
done

status=0
for ((job = 0; job < JOBS; job++)); do
    wait "${pids[$job]}" || status=$?
    echo "job $job: $(grep -E '^[0-9]+ mutants tested' "target/mutants-out/$job/run.log" || tail -n 3 "target/mutants-out/$job/run.log")"
done
python3 scripts/mutants_score.py target/mutants-out/*/mutants.out || true
for kind in missed timeout; do
    cat target/mutants-out/*/mutants.out/$kind.txt 2>/dev/null | sed "s/^/$kind: /"
done
exit "$status"
