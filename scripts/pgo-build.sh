#!/usr/bin/env bash
# Profile-guided release build of tether-relay and tether-agent.
#
#   scripts/pgo-build.sh            # -> target/pgo/release/{tether-relay,tether-agent,tether-certs}
#   scripts/pgo-build.sh --quick    # a few seconds of training: checks that the steps work
#
# Exit status 3: llvm-profdata is not available here (nothing was built).
#
# Why: a request crosses hyper, h3, quinn, rustls, tokio and tracing, thousands of
# instructions spread over many functions, and at one request at a time the relay and
# the agent share a core with the caller and the service, so every wake-up starts with
# cold caches. A profile of real traffic lets the compiler lay the hot path out
# contiguously and inline along it (bench/RESULTS.md, sixth round: added p50 at one caller
# -8 to -10 us over the plain release build, req/s at 64 +5 to +15 %).
#
# Steps: (1) build instrumented binaries, (2) run them under the benchmark harness's own
# traffic through a real relay and agent (sequential and 64 concurrent GETs, one upload
# and one download), (3) merge the profiles, (4) build again with them. Needs
# `llvm-profdata` of the toolchain's LLVM: `rustup component add llvm-tools` (tried here).
# tether-certs is not on the request path and is copied from the plain release build.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[[ "${1:-}" == --quick ]] && quick=1

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$profdata" ]]; then
  echo "llvm-profdata not found; trying: rustup component add llvm-tools" >&2
  rustup component add llvm-tools >&2 || true
fi
if [[ ! -x "$profdata" ]]; then
  echo "error: $profdata missing (rustup component add llvm-tools); no PGO build made" >&2
  exit 3 # the one failure that is the machine's, not the build's (CI tells them apart)
fi

out=$PWD/target/pgo
rm -rf "$out/profiles" "$out/train"
mkdir -p "$out/profiles"

echo "pgo: plain release build (harness, tether-certs) ..." >&2
cargo build --release --locked --quiet -p tether-bench -p tether-certs

echo "pgo: instrumented build ..." >&2
RUSTFLAGS="-Cprofile-generate=$out/profiles" CARGO_TARGET_DIR="$out/gen" \
  cargo build --release --locked --quiet -p tether-relay -p tether-agent
cp target/release/tether-certs "$out/gen/release/"
# Build scripts and proc macros ran instrumented too: keep only the training's profiles.
rm -f "$out"/profiles/*.profraw

echo "pgo: training on the harness's traffic ..." >&2
if ((quick)); then
  train=(--smoke)
else
  train=(--reps 1 --latency-requests 5000 --concurrency 1,64 --seconds 4 --warmup-seconds 0
         --bulk-bytes 268435456)
fi
target/release/tether-bench run --scenarios latency,throughput,bulk --targets tether \
  --bin-dir "$out/gen/release" --out "$out/train" "${train[@]}" >"$out/train.log" 2>&1 ||
  { cat "$out/train.log" >&2; echo "error: training run failed" >&2; exit 1; }
shopt -s nullglob
raw=("$out"/profiles/*.profraw)
if ((${#raw[@]} == 0)); then
  echo "error: the training run wrote no profiles into $out/profiles" >&2
  exit 1
fi
"$profdata" merge -o "$out/merged.profdata" "${raw[@]}"

echo "pgo: optimised build ..." >&2
RUSTFLAGS="-Cprofile-use=$out/merged.profdata" CARGO_TARGET_DIR="$out/use" \
  cargo build --release --locked --quiet -p tether-relay -p tether-agent
mkdir -p "$out/release"
for b in tether-relay tether-agent; do
  install -m 0755 "$out/use/release/$b" "$out/release/$b"
done
install -m 0755 target/release/tether-certs "$out/release/tether-certs"
for b in tether-relay tether-agent; do
  "$out/release/$b" --version >/dev/null || { echo "error: $out/release/$b does not run" >&2; exit 1; }
done
echo "pgo: done: $out/release (profiles from ${#raw[@]} processes)" >&2
