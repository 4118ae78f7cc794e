"""The op vocabulary the checker knows: every op family's rules, joined here explicitly."""
from dsl import ops, ops_sets

OPS = {**ops.OPS, **ops_sets.OPS}
