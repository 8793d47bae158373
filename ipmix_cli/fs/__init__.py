"""File-system safety: atomic writes, durable renames, and the temporary names they use."""
