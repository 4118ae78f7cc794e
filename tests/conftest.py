"""Before any test module is imported: Triton kernels run on CPU tensors only when triton was first
imported under TRITON_INTERPRET=1, and torch_geometric imports triton, so whichever test file a
worker runs first must find it set (tests/test_triton.py sets it too, for runs of that file alone)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
