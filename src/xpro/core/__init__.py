"""The pure domain: layouts, the reference model, the merge, keys, values.

Nothing here imports anything of xpro above it, nor cffi, sockets or click:
numpy only (docs/overview.rst).
"""
