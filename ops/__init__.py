"""The op vocabulary: one module per op family, each op defined once (ops/op.py says what a
definition holds); ops/registry.py joins the families.

Adding an op: write its parts in its family's module (checker rule, symmetry rule, torch form,
ONNX emitter, Triton torch source, documentation row; for an argument of indices, its `Indices`,
which gives run-time range checks and verify's samples) and list it in that module's SPEC and GRAPH;
run `python -m ops.doc --write` to regenerate dsl/LANGUAGE.md's tables; add a row to
tests/test_ops.py, which fails while a graph op has none.
"""
