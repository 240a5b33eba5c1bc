"""HTTP/1.1 messages without I/O: header fields, response heads, framing and body reading,
shared by the managed proxy (network/) and the registry client (remote/http.py)."""
