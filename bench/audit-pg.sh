#!/usr/bin/env bash
# Audit appends on the PostgreSQL store, two replicas writing at once (bench/audit.rs),
# on a throwaway cluster with fsync on, against plain inserts into the same server.
#   bash bench/audit-pg.sh            EVENTS=100000 bash bench/audit-pg.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d /tmp/postern-bench-store.XXXXXX)
trap 'script/store-cluster stop "$dir"' EXIT
base=$(STORE_FSYNC=on script/store-cluster start "$dir")
psql "$base/postgres" -qAtc "CREATE DATABASE bench"
STORE_URL="$base/bench" cargo bench --locked --bench audit
