#!/usr/bin/env bash
# Installs the real Codex binary (the compatibility peer) into a git-ignored cache and
# prints its path. Idempotent: a second run only prints the path.
set -euo pipefail
version="${CODEX_PEER_VERSION:-0.169.0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$root/.cache/codex-npm-$version"
binary="$prefix/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
if [ ! -x "$binary" ]; then
  command -v npm >/dev/null || { echo "install-codex-peer: npm is required" >&2; exit 1; }
  mkdir -p "$prefix"
  npm install --silent --no-save --no-audit --no-fund --prefix "$prefix" "@openai/codex@$version" >&2
fi
[ -x "$binary" ] || { echo "install-codex-peer: $binary missing after install" >&2; exit 1; }
echo "$binary"
