"""Wire protocol: the JSON-RPC envelope, message types, limits and PathUri."""
