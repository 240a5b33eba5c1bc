"""The JSON-RPC engine shared by server and client: one peer per transport connection."""
