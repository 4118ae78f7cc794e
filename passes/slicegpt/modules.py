"""The few modules a sliced model needs beyond its own: a norm over the original width, and the
shortcut and tied-head maps, attached with hooks so the family's forward code stays untouched."""
from __future__ import annotations

import torch
from torch import nn


class StreamRMSNorm(nn.Module):
    """RMSNorm that keeps dividing by the original stream width D after slicing.

    On a rotated stream ‖xQ‖ = ‖x‖, so this equals the dense norm exactly; after slicing it drops
    only the energy of the discarded directions. A stream tensor wider than `dim` (another group's
    width, zero-padded) is read through its leading `dim` entries."""

    def __init__(self, width: int, eps: float, dim: int):
        super().__init__()
        self.width, self.eps = width, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > self.weight.shape[0]:
            x = x[..., :self.weight.shape[0]]
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).sum(-1, keepdim=True) / self.width + self.eps)
        return (h * self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, width={self.width}, eps={self.eps}"


class SliceAdapters(nn.Module):
    """Shortcut matrices and the tied-head map, with the plan that says where they hook in.

    A shortcut S on a residual add turns `s + f` into `s·S + f`, written as `s + (f + s·S - s)`:
    the norm reading s stashes it and the branch's writer adds `s·S - s` to its output. Outputs
    narrower than the stream tensor (a per-layer schedule) are zero-padded to it first."""

    def __init__(self, plan: dict):
        super().__init__()
        self.plan = plan
        self.shortcuts = nn.ParameterDict()
        self.head_map: nn.Parameter | None = None
        self.head_u: nn.Parameter | None = None
        self.head_mean: nn.Parameter | None = None
        self._stash: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def install(self, model: nn.Module) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for name in self.plan.get("padded", []):
            self._hook(model.get_submodule(name).register_forward_hook(self._padder(self.plan["dim"])))
        for cut in self.plan.get("shortcuts", []):
            key = cut["key"]
            self._hook(model.get_submodule(cut["norm"]).register_forward_pre_hook(self._stasher(key)))
            self._hook(model.get_submodule(cut["writer"]).register_forward_hook(self._adder(key)))
        head = self.plan.get("head")
        if head:
            mod = model.get_submodule(head["module"])
            self._hook(mod.register_forward_pre_hook(self._head_in))
            if self.head_u is not None:
                self._hook(mod.register_forward_hook(self._head_out))

    def _hook(self, handle) -> None:
        self._handles.append(handle)

    def _stasher(self, key: str):
        def hook(_mod, args):
            self._stash[key] = args[0]
        return hook

    @staticmethod
    def _padder(wide: int):
        def hook(_mod, _args, out):
            return nn.functional.pad(out, (0, wide - out.shape[-1]))
        return hook

    def _adder(self, key: str):
        def hook(_mod, _args, out):
            s, cut = self._stash.pop(key), self.shortcuts[key]
            moved = s[..., :cut.shape[0]] @ cut
            if moved.shape[-1] < s.shape[-1]:
                moved = nn.functional.pad(moved, (0, s.shape[-1] - moved.shape[-1]))
            return out + (moved - s).reshape(out.shape)
        return hook

    def _head_in(self, _mod, args):
        y = args[0]
        if self.head_u is not None:
            self._stash["head"] = y
        return (y @ self.head_map,) + tuple(args[1:])

    def _head_out(self, _mod, _args, out):
        # LayerNorm models: the head also saw the embedding rows' means, which centering removed.
        y = self._stash.pop("head")
        return out + (y @ self.head_u).unsqueeze(-1) * self.head_mean


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters: a tied embedding and head count once, and every adapter counts."""
    return sum(p.numel() for p in model.parameters())
