"""Linux enforcement: bubblewrap + seccomp, Landlock fallback."""
