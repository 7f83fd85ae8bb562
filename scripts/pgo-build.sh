#!/usr/bin/env bash
# Profile-guided release build of tether-relay and tether-agent.
#
#   scripts/pgo-build.sh            # -> target/pgo/release/{tether-relay,tether-agent,tether-certs}
#   scripts/pgo-build.sh --quick    # a few seconds of training: checks that the steps work
#   PGO_BOLT=0 scripts/pgo-build.sh # without the BOLT stage
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
# small-request traffic through a real relay and agent (sequential and 64 concurrent
# GETs), (3) merge the profiles, (4) build again with them. Needs
# `llvm-profdata` of the toolchain's LLVM: `rustup component add llvm-tools` (tried here).
#
# Then, where LLVM's post-link optimiser BOLT is installed (Debian: `apt install
# bolt-16`), (5) instrument the optimised binaries with it, train them the same way, and
# rewrite them with the hot code laid out by that profile (bench/RESULTS.md, eighth
# round: added p50 at one caller -1.5 us on average over the PGO build alone, six
# alternating pairs). Without BOLT the PGO binaries are the result, with a note.
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
rm -rf "$out/profiles" "$out/train" "$out/bolt"
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
  train_args=(--smoke)
else
  train_args=(--reps 1 --latency-requests 5000 --concurrency 1,64 --seconds 4 --warmup-seconds 0)
fi
# No bulk transfer in the training: its few hundred thousand full-size packets outweighed
# the request path in the profile, and the code was laid out for them. Without it, added
# p50 at one caller fell by about 0.8 us (eight alternating pairs, bench/RESULTS.md,
# thirteenth round) while bulk MB/s and req/s at 64 stayed where they were.
# train BIN_DIR NAME: the harness's traffic through the binaries in BIN_DIR.
train() {
  target/release/tether-bench run --scenarios latency,throughput --targets tether \
    --bin-dir "$1" --out "$out/$2" "${train_args[@]}" >"$out/$2.log" 2>&1 ||
    { cat "$out/$2.log" >&2; echo "error: training run ($2) failed" >&2; exit 1; }
}
train "$out/gen/release" train
shopt -s nullglob
raw=("$out"/profiles/*.profraw)
if ((${#raw[@]} == 0)); then
  echo "error: the training run wrote no profiles into $out/profiles" >&2
  exit 1
fi
"$profdata" merge -o "$out/merged.profdata" "${raw[@]}"

echo "pgo: optimised build ..." >&2
# --emit-relocs keeps the relocations BOLT needs to move functions; it only adds to the
# file's size.
RUSTFLAGS="-Cprofile-use=$out/merged.profdata -Clink-arg=-Wl,--emit-relocs" \
  CARGO_TARGET_DIR="$out/use" \
  cargo build --release --locked --quiet -p tether-relay -p tether-agent
mkdir -p "$out/release"
for b in tether-relay tether-agent; do
  install -m 0755 "$out/use/release/$b" "$out/release/$b"
done
install -m 0755 target/release/tether-certs "$out/release/tether-certs"

# The LLVM directory of the newest BOLT installed (its runtime library sits next to it).
bolt_dir=""
if [[ "${PGO_BOLT:-1}" != 0 ]]; then
  for d in $(printf '%s\n' /usr/lib/llvm-*/ | sort -V); do
    [[ -x "$d/bin/llvm-bolt" && -f "$d/lib/libbolt_rt_instr.a" ]] && bolt_dir=${d%/}
  done
fi
# bolt_stage: instrument, train, rewrite; the rewritten binaries replace the PGO ones
# only when both were made and run. Returns non-zero, having said why, on any failure.
bolt_stage() {
  local bolt="$bolt_dir/bin/llvm-bolt" b fdata
  mkdir -p "$out/bolt/inst" "$out/bolt/fdata" || return 1
  cp target/release/tether-certs "$out/bolt/inst/" || return 1
  for b in tether-relay tether-agent; do
    # The runtime library is named bare: BOLT looks for it in its own lib directory.
    "$bolt" "$out/release/$b" -o "$out/bolt/inst/$b" -instrument \
      --runtime-instrumentation-lib=libbolt_rt_instr.a \
      --instrumentation-file="$out/bolt/fdata/$b" --instrumentation-file-append-pid \
      >"$out/bolt/$b.instrument.log" 2>&1 ||
      { tail -5 "$out/bolt/$b.instrument.log" >&2; echo "BOLT could not instrument $b" >&2; return 1; }
  done
  (train "$out/bolt/inst" bolt-train) || return 1
  for b in tether-relay tether-agent; do
    fdata=("$out/bolt/fdata/$b".*.fdata)
    ((${#fdata[@]} > 0)) || { echo "the BOLT training run wrote no profile for $b" >&2; return 1; }
    "$bolt_dir/bin/merge-fdata" "${fdata[@]}" >"$out/bolt/$b.fdata" 2>"$out/bolt/$b.merge.log" ||
      { tail -5 "$out/bolt/$b.merge.log" >&2; echo "BOLT could not merge the profiles of $b" >&2; return 1; }
    "$bolt" "$out/release/$b" -o "$out/bolt/$b" -data="$out/bolt/$b.fdata" \
      -reorder-blocks=ext-tsp -reorder-functions=hfsort+ -split-functions -split-all-cold \
      -split-eh -icf=1 -use-gnu-stack -dyno-stats >"$out/bolt/$b.optimize.log" 2>&1 ||
      { tail -5 "$out/bolt/$b.optimize.log" >&2; echo "BOLT could not rewrite $b" >&2; return 1; }
    "$out/bolt/$b" --version >/dev/null || { echo "the BOLT-rewritten $b does not run" >&2; return 1; }
  done
  for b in tether-relay tether-agent; do
    install -m 0755 "$out/bolt/$b" "$out/release/$b"
  done
}

# BOLT is a layout optimisation on top of a complete PGO build: when it fails, the PGO
# binaries stay, with a warning, rather than failing the build.
bolted=""
if [[ -n "$bolt_dir" ]]; then
  echo "pgo: BOLT ($bolt_dir): instrumenting, training, rewriting ..." >&2
  if bolt_stage; then
    bolted="; BOLT-rewritten"
  else
    echo "pgo: warning: the BOLT stage failed (logs in $out/bolt); the binaries are PGO only" >&2
  fi
elif [[ "${PGO_BOLT:-1}" != 0 ]]; then
  echo "pgo: note: llvm-bolt not found (apt install bolt-16); the binaries are PGO only" >&2
fi
for b in tether-relay tether-agent; do
  "$out/release/$b" --version >/dev/null || { echo "error: $out/release/$b does not run" >&2; exit 1; }
done
echo "pgo: done: $out/release (profiles from ${#raw[@]} processes$bolted)" >&2
