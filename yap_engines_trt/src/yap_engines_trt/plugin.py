"""Plugin entry point (skeleton; filled in by its issue). Keep this module light:
heavy libraries are imported inside factories, never at import time."""
