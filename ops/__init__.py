"""The op vocabulary: one module per op family, each op defined once (ops/op.py says what a
definition holds); ops/registry.py joins the families."""
