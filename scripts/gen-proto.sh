#!/usr/bin/env bash
# Regenerates the committed Python modules for the relay frame schema:
#   proto/codex/exec_server/relay/v1/relay.proto
#     -> codexexec/relay/proto/relay_pb2.py and relay_pb2.pyi
#
# Usage: scripts/gen-proto.sh [OUT_DIR]     (default: codexexec/relay/proto)
# Needs grpcio-tools (the test extra), which ships protoc as `python -m grpc_tools.protoc`.
# Nothing at run time needs protoc: only the generated files are imported.
# Set PYTHON to choose the interpreter (default: the project's .venv, else python3).
#
# protoc names the output after the .proto path (codex/exec_server/relay/v1/relay_pb2.py) and
# records that dotted name as the classes' __module__; the generated file is moved to
# codexexec/relay/proto/ and the recorded module name is rewritten to match where it lives.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
out="${1:-$root/codexexec/relay/proto}"
proto_rel="codex/exec_server/relay/v1/relay.proto"

"$PYTHON" -c 'import grpc_tools.protoc' 2>/dev/null || {
  echo "gen-proto: grpc_tools is missing; install it with: pip install -e '.[test]'" >&2
  exit 1
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m grpc_tools.protoc -I "$root/proto" --python_out="$tmp" --pyi_out="$tmp" "$proto_rel"

mkdir -p "$out"
"$PYTHON" - "$tmp/${proto_rel%.proto}" "$out" <<'PY'
import sys
from pathlib import Path

stem, out = Path(sys.argv[1]), Path(sys.argv[2])
generated_module = "'codex.exec_server.relay.v1.relay_pb2'"
actual_module = "'codexexec.relay.proto.relay_pb2'"
source = Path(f"{stem}_pb2.py").read_text(encoding="utf-8")
if source.count(generated_module) != 1:
    sys.exit(f"gen-proto: expected one {generated_module} in the protoc output")
(out / "relay_pb2.py").write_text(source.replace(generated_module, actual_module), encoding="utf-8")
(out / "relay_pb2.pyi").write_text(Path(f"{stem}_pb2.pyi").read_text(encoding="utf-8"), encoding="utf-8")
PY
echo "gen-proto: wrote $out/relay_pb2.py and $out/relay_pb2.pyi" >&2
