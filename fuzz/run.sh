#!/usr/bin/env bash
# Runs every fuzz target (or those named) for up to SECONDS (default 600) or 10 million executions,
# whichever comes first, then minimizes its corpus and packs it into corpus/<target>.tar.gz (the
# committed form); prints one summary line per target:
#   <target> <executions> <seconds> <corpus files> <crashes>
# Usage: fuzz/run.sh [-t SECONDS] [target ...]   (needs cargo-fuzz: cargo install cargo-fuzz)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=600
if [ "${1:-}" = "-t" ]; then seconds=$2; shift 2; fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=($(ls fuzz_targets | sed 's/\.rs$//'))
export RUSTC_BOOTSTRAP=1   # lets the stable toolchain take cargo-fuzz's sanitizer flags
cargo fuzz build -O >/dev/null 2>&1 || { echo "fuzz/run.sh: cargo fuzz build failed" >&2; exit 1; }
mkdir -p logs
# A target's corpus is committed as corpus/<target>.tar.gz (git tracks one file per target, not
# thousands): unpacked into corpus/<target>/ (ignored by git) before the run, packed again,
# minimized and byte-for-byte reproducible, after it.
unpack() { mkdir -p "corpus/$1" && [ ! -f "corpus/$1.tar.gz" ] || tar -xzf "corpus/$1.tar.gz" -C "corpus/$1"; }
pack() {
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - -C "corpus/$1" . |
        gzip -n -9 >"corpus/$1.tar.gz"
}
for t in "${targets[@]}"; do
    unpack "$t"
    start=$SECONDS
    cargo fuzz run -O "$t" -- -max_total_time="$seconds" -runs=10000000 -rss_limit_mb=2048 \
        -timeout=10 -print_final_stats=1 >"logs/$t.log" 2>&1
    status=$?
    took=$((SECONDS - start))
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    crashes=$(ls "artifacts/$t" 2>/dev/null | wc -l)
    cargo fuzz cmin -O "$t" >/dev/null 2>&1
    files=$(ls "corpus/$t" | wc -l)
    pack "$t"
    echo "$t ${runs:-?} ${took} ${files} ${crashes} (exit ${status})"
done
