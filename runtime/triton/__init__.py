"""Triton kernels for invc: templates, the launcher prelude, and torch.library custom ops.

Nothing here imports triton at import time; see README.md for what becomes a kernel.
"""
