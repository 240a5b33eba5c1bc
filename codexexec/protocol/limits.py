"""Protocol constants shared by server and client, as Codex 0.169.0 uses them.

Kept in one place so a limit is changed once; each names its Codex counterpart.
"""

# JSON-RPC decoding: more values than this in one message is rejected (Codex rpc.rs).
MAX_JSON_VALUES_PER_MESSAGE = 262_144

# Nesting this deep is rejected (depth 127 passes), as serde_json's limit does in Codex.
MAX_JSON_NESTING_DEPTH = 128

# Largest JSON-RPC batch (array of messages) one connection may send.
MAX_BATCH_REQUESTS = 128

# Output retention per process (RETAINED_OUTPUT_BYTES_PER_PROCESS / _CHUNKS_PER_PROCESS).
RETAINED_OUTPUT_BYTES_PER_PROCESS = 1024 * 1024
RETAINED_OUTPUT_CHUNKS_PER_PROCESS = 50_000

# A closed process stays readable this long: 80 s measured on Codex 0.169.0 (the
# reference's 30 s is an older source; docs/codex-0.169-observed.md).
EXITED_PROCESS_RETENTION_SECONDS = 80.0

# codexexec's bounds on one session (Codex has none: 10,000 pipelined starts took a server
# from 39 to 221 MB). Starts beyond the running limit are refused; beyond the closed limit
# the oldest closed process is forgotten before its retention ends.
MAX_RUNNING_PROCESSES_PER_SESSION = 512
MAX_CLOSED_PROCESSES_PER_SESSION = 1024
# Detached sessions kept for resuming at once (each `exec --detach` leaves one); past it one
# ends early: the longest-detached with nothing running, else the longest-detached. (Codex
# 0.169.0 keeps every one for its TTL.)
MAX_DETACHED_SESSIONS = 1024

# process/write idempotency: remembered writeIds per process.
REMEMBERED_WRITE_IDS_PER_PROCESS = 4096

# Websocket keepalive: the server pings every 30 s.
WEBSOCKET_PING_INTERVAL_SECONDS = 30.0
WEBSOCKET_PING_TIMEOUT_SECONDS = 60.0

# Messages queued per connection direction before producers wait (Codex channel capacity).
CONNECTION_QUEUE_CAPACITY = 128

# codexexec keeps a detached session longer than Codex's 10 s so a person can reattach.
DEFAULT_DETACHED_SESSION_TTL_SECONDS = 600.0

# Largest single JSON-RPC message codexexec accepts on any transport.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# One read from a child's stdout/stderr; larger reads mean fewer, bigger notifications.
OUTPUT_READ_CHUNK_BYTES = 64 * 1024

# Filesystem methods (Codex 0.169.0, docs/codex-0.169-observed.md §26).
FS_MAX_OPEN_HANDLES_PER_CONNECTION = 128
FS_MAX_HANDLE_ID_BYTES = 32
FS_MAX_BLOCK_BYTES = 1024 * 1024  # fs/readBlock len and fs/writeBlock chunk, decoded
FS_WALK_MAX_DEPTH = 64
FS_WALK_MAX_DIRECTORIES = 10_000
FS_WALK_MAX_ENTRIES = 50_000
# fs/walk stops once its entries would exceed this: each costs its URI's length + 64.
FS_WALK_RESPONSE_BUDGET_BYTES = 4 * 1024 * 1024
FS_WALK_ITEM_OVERHEAD_BYTES = 64
# codexexec's bound (Codex has none): whole-file reads and listings that fit one message.
FS_MAX_WHOLE_READ_BYTES = (MAX_MESSAGE_BYTES - 64 * 1024) // 4 * 3
