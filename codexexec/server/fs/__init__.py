"""The `fs/*` methods: files, directories, walks, streamed reads and writes, watches.

Kept import-light: the sandboxed helper (``worker``) starts from this package.
"""
