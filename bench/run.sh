#!/usr/bin/env bash
# Tether benchmarks (issue #4): builds in release mode, installs the peers (nginx and wrk
# from Debian packages, rathole 0.5.0 from crates.io into bench/.tools), then runs
# `tether-bench run` with the given flags. Everything runs on 127.0.0.1 (the loss
# scenario in two network namespaces it creates). Results: target/bench/results.{md,json,svg}.
#
#   bench/run.sh                      # full run (~12 min on 2 cores)
#   bench/run.sh --smoke              # ~5 s per scenario, only checks that it all works
#   bench/run.sh --scenarios latency,throughput --targets direct,tether
#   BENCH_NO_INSTALL=1 bench/run.sh   # never install anything; missing peers are skipped
#   BENCH_PGO=1 bench/run.sh          # the profile-guided build (scripts/pgo-build.sh, ~7 min more)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "building (release) ..." >&2
cargo build --release --workspace --quiet

if [[ "${BENCH_NO_INSTALL:-0}" != 1 ]]; then
  missing=()
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
  command -v wrk >/dev/null || missing+=(wrk)
  if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      echo "installing ${missing[*]} (apt-get) ..." >&2
      apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; } ||
        echo "could not install ${missing[*]}: those peers will be reported missing" >&2
    else
      echo "${missing[*]} missing and cannot apt-get install here: reported missing" >&2
    fi
  fi
  if [[ ! -x bench/.tools/bin/rathole ]]; then
    # rathole's lock file does not build on this toolchain: install without --locked.
    echo "installing rathole 0.5.0 into bench/.tools (cargo install, a few minutes) ..." >&2
    cargo install rathole --version 0.5.0 --root bench/.tools --quiet ||
      echo "could not install rathole: rathole targets will be reported missing" >&2
  fi
fi

if [[ "${BENCH_PGO:-0}" == 1 ]]; then
  scripts/pgo-build.sh
  exec target/release/tether-bench run --bin-dir target/pgo/release "$@"
fi
exec target/release/tether-bench run "$@"
