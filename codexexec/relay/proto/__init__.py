"""Generated protobuf modules for the relay frame schema (do not edit; run scripts/gen-proto.sh).

Source: proto/codex/exec_server/relay/v1/relay.proto (package codex.exec_server.relay.v1).
"""
