"""Dead-code elimination: drop nodes whose results nobody reads, then the parameters nobody reads."""
from __future__ import annotations

from itertools import chain

import torch.fx as fx

from passes.base import graph_pass


def _drop_unread_attrs(gm: fx.GraphModule) -> None:
    read = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    # remove_duplicate=False: a tied tensor may be read under one name and orphaned under another.
    names = [name for name, _ in chain(gm.named_parameters(remove_duplicate=False),
                                       gm.named_buffers(remove_duplicate=False))]
    for name in names:
        if name not in read:
            owner, _, attr = name.rpartition(".")
            delattr(gm.get_submodule(owner), attr)
    # Submodules left holding nothing the graph reads go too, so the module tree stays tidy.
    gm.delete_all_unused_submodules()


@graph_pass("remove unused nodes and the parameters no node reads")
def dce(gm: fx.GraphModule) -> fx.GraphModule:
    # fx treats placeholders and the output as impure, so the module's interface is kept.
    gm.graph.eliminate_dead_code()
    _drop_unread_attrs(gm)
    return gm
