#!/usr/bin/env bash
# Checks the import rules of docs/ARCHITECTURE.md ("Dependency rules") on the non-test code of
# src/: which layer may name which. Test modules (from `#[cfg(test)]` on, and tests.rs files) may
# use fakes from any layer.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
# Prints "file:line: text" for each non-test line of the .rs files under $1 matching $2.
# shellcheck disable=SC2016  # the awk program is meant to be literal
offenders() {
  local dir=$1 pattern=$2
  find "$dir" -name '*.rs' ! -name 'tests.rs' ! -name '*_tests.rs' -print0 |
    xargs -0 awk -v pat="$pattern" '
      FNR == 1 { live = 1 }
      /^#\[cfg\(test\)\]/ { live = 0 }
      live && $0 ~ pat && $0 !~ /^[[:space:]]*\/\// { print FILENAME ":" FNR ": " $0 }'
}
rule() {
  local what=$1 dir=$2 pattern=$3 found
  found=$(offenders "$dir" "$pattern")
  if [ -n "$found" ]; then
    echo "layer rule broken: $what" >&2
    echo "$found" >&2
    fail=1
  fi
}

# `([^a-z_]|$)`: a whole module name (`cache`, not `cachedir`).
rule "fs/ must not import store, cache or tier" src/fs 'crate::(store|cache|tier)([^a-z_]|$)'
rule "read/ must not import cache or meta" src/read 'crate::(cache|meta)([^a-z_]|$)'
rule "tier/ must not import fs, meta or read" src/tier 'crate::(fs|meta|read|fuse)'
rule "cache/ must not import store, tier, meta or read" src/cache 'crate::(store|tier|meta|read)'
rule "meta/ must not import cache, read or tier" src/meta 'crate::(cache|read|tier)([^a-z_]|$)'
rule "store/ must not import cache, tier, meta or read" src/store 'crate::(cache|tier|meta|read)([^a-z_]|$)'
rule "cachedir.rs must not import any other module" src/cachedir.rs 'crate::'
rule "warnings.rs must not import any other module" src/warnings.rs 'crate::'

# Only fuse/ names fuser; only store/s3.rs names the AWS SDK.
found=$(grep -rnE '(^|[^a-z_])fuser::' src --include='*.rs' | grep -v '^src/fuse/' || true)
[ -z "$found" ] || { echo "layer rule broken: only src/fuse/ may use fuser" >&2; echo "$found" >&2; fail=1; }
found=$(grep -rnE '(aws_sdk_|aws_config|aws_smithy)' src --include='*.rs' | grep -v '^src/store/s3.rs:' | grep -vE ':[0-9]+:[[:space:]]*//' || true)
[ -z "$found" ] || { echo "layer rule broken: only src/store/s3.rs may use the AWS SDK" >&2; echo "$found" >&2; fail=1; }

# Selftest: the rule machinery must catch a planted import (so this check cannot pass vacuously).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'use crate::store::StoreError;\n' > "$tmp/planted.rs"
[ -n "$(offenders "$tmp" 'crate::(store|cache|tier)')" ] || { echo "check-layers selftest failed" >&2; fail=1; }

[ "$fail" -eq 0 ] && echo "layer rules hold"
exit "$fail"
