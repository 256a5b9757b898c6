#!/usr/bin/env bash
# Every figure of BENCHMARKS.md, in the order of its sections, with the commands that
# section names. Run on a quiet machine: nothing else building or serving.
#   bash scripts/bench/all.sh            # the benchmarks (about 25 minutes)
#   bash scripts/bench/all.sh --long     # also the soak (10 min), the fault suite's
#                                        # long form (about 10 min) and fuzzing (10 min
#                                        # per target, needs nightly and cargo-fuzz)
# Output goes to the terminal and to target/bench/<timestamp>.log.
set -euo pipefail
cd "$(dirname "$0")/../.."

long=false
if [ "${1:-}" = "--long" ]; then
  long=true
fi
mkdir -p target/bench
log="target/bench/$(date -u +%Y%m%dT%H%M%SZ).log"
exec > >(tee "$log") 2>&1
step() { printf '\n==> %s\n' "$*"; }

step "OAuth client: challenge parsing and discovery cache"
cargo bench -p latchkey-oauth --bench oauth -- --warm-up-time 1 --measurement-time 3
step "Vault: keyring envelopes (encryption throughput)"
cargo bench -p latchkey-vault --bench keyring -- --warm-up-time 1 --measurement-time 2
step "Vault: 1,000,000 credentials on SQLite and PostgreSQL"
LATCHKEY_BENCH_ROWS=1000000 LATCHKEY_BENCH_LOOKUPS=20000 LATCHKEY_BENCH_BACKENDS=sqlite,postgres \
  cargo bench -p latchkey-vault --bench store_scale
step "Guard: JWT validation with a warm JWKS"
cargo bench -p latchkey-guard --bench jwt -- --warm-up-time 1 --measurement-time 3
step "Token service: cached lookups and 10,000 callers on an expired slot"
cargo bench -p latchkey-broker --bench token_service -- --warm-up-time 1 --measurement-time 3

cargo build --release -p latchkey-cli -p latchkey-bench
step "Token service: memory with 100,000 cached tokens"
./target/release/latchkey-bench token-memory
step "latchkey serve: start-up time and idle memory"
./target/release/latchkey-bench startup --runs 10 --idle-seconds 3
for clients in 1 64 256; do
  step "Gateway: /mcp/{server} at $clients clients"
  ./target/release/latchkey-bench proxy --clients "$clients" --seconds 5 --rounds 2 --warmup 2
done

if $long; then
  step "Soak: 10 minutes through /mcp/{server} with expiries every 30 s"
  bash scripts/bench/soak.sh
  step "Fault-injection suite, long form"
  bash scripts/bench/faults.sh
  step "Fuzzing, 10 minutes per target"
  bash scripts/fuzz.sh 600
fi
echo "log: $log"
