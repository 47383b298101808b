"""A recflow plugin that cannot be imported, as one with a missing dependency."""

raise RuntimeError("recflow_broken cannot start: its licence server is unreachable")
