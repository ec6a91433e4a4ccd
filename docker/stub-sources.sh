#!/bin/sh
# Writes empty stand-ins for the source files of every workspace member
# whose sources were not copied yet (the manifest alone is there): its
# library, each [[bin]] and each [[bench]]. Cargo loads every member's
# manifest even to build one package, so `cargo build -p consonant-relayer`
# can then compile the dependencies alone in their own cached image layer
# (docker/Dockerfile). Run from the workspace root. tests/dockerfile.rs runs
# it and checks that the workspace then loads, so a new crate, binary or
# bench cannot break the image build.
set -eu
for manifest in crates/*/Cargo.toml; do
  crate=${manifest%/Cargo.toml}
  [ -d "$crate/src" ] && continue
  mkdir -p "$crate/src" "$crate/benches"
  : > "$crate/src/lib.rs"
  awk '/^\[\[bin\]\]/ { in_bin = 1; next }
       /^\[/ { in_bin = 0 }
       in_bin && /^path *=/ { gsub(/^path *= *"|".*$/, ""); print }' "$manifest" |
  while read -r bin; do
    mkdir -p "$crate/$(dirname "$bin")"
    echo 'fn main() {}' > "$crate/$bin"
  done
  awk '/^\[\[bench\]\]/ { in_bench = 1; next }
       /^\[/ { in_bench = 0 }
       in_bench && /^name *=/ { gsub(/^name *= *"|".*$/, ""); print }' "$manifest" |
  while read -r bench; do
    echo 'fn main() {}' > "$crate/benches/$bench.rs"
  done
done
