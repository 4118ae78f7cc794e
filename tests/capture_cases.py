"""Small torch models for the symmetry tests of captured graphs: each exercises one lifted op, the
way a user would write it. tests/test_symmetry.py names them in specs (`torch("tests.capture_cases:...")`)."""
import torch
from torch import nn


class First(nn.Module):
    """The first element of the set: picks an order."""
    def forward(self, x):
        return x[:, 0]


class Exp(nn.Module):
    def forward(self, pos):
        return torch.exp(pos).mean(1)


class Leaky(nn.Module):
    def forward(self, pos):
        return nn.functional.leaky_relu(pos, 0.1).mean(1)


class Clamped(nn.Module):
    def forward(self, pos):
        return pos.clamp(min=-0.5, max=0.5).mean(1)


class Cumulative(nn.Module):
    """A running sum along the set, an op invc has no rule for."""
    def forward(self, x):
        return x.cumsum(1).sum(1)


class Counted(nn.Module):
    """Relative vectors averaged per node, divided by counts repeated over the coordinates (the EGNN
    layer's segment mean), or, with `skew`, by counts that differ per coordinate."""
    def __init__(self, skew: bool = False):
        super().__init__()
        self.skew = skew

    def forward(self, pos, senders, receivers):
        diff = pos[senders] - pos[receivers]
        total = pos.new_zeros(pos.shape).index_add_(0, receivers, diff)
        ones = torch.ones_like(diff) * (torch.arange(3.0) + 1 if self.skew else 1)
        count = pos.new_zeros(pos.shape).index_add_(0, receivers, ones)
        return pos + total / count.clamp(min=1)


class Rest(nn.Module):
    """All but the first element of the set."""
    def forward(self, x):
        return x[:, 1:].sum(1)


class Positive(nn.Module):
    """How many coordinates of each point are positive: depends on the axes."""
    def forward(self, pos):
        return (pos > 0).sum(-1, dtype=torch.float32)


class Ordered(nn.Module):
    """Edges whose sender id is below the receiver id: node ids have no order under relabelling."""
    def forward(self, h, senders, receivers):
        return (senders < receivers).unsqueeze(1) * h[senders]


class Doubled(nn.Module):
    """Each position's coordinates written twice, summed."""
    def forward(self, pos):
        return pos.repeat(1, 2).sum(-1)


class Chosen(nn.Module):
    """Some of the coordinates, chosen by a mask."""
    def forward(self, pos, keep):
        return pos[:, keep].sum(-1)


class Mixed(nn.Module):
    """A kernel-1 convolution whose channels are the 3 coordinates: it mixes them."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 1)

    def forward(self, pos):
        return self.conv(pos.transpose(1, 2)).mean(-1)


class Root(nn.Module):
    """Square roots of squared coordinates: their absolute values."""
    def forward(self, v):
        return torch.sqrt(v * v).mean(-1)


class Lengths(nn.Module):
    """Vector lengths and distances to the centroid, as models compute them."""
    def forward(self, pos, v):
        return torch.linalg.norm(v, dim=-1) + (pos - pos.mean(1, keepdim=True)).norm(dim=-1)


class Cast(nn.Module):
    """Casts as users write them: a mask and counts as floats, a vector kept float, ids widened."""
    def forward(self, x, pos, senders):
        keep = (x > 0).float()
        count = keep.sum(1, keepdim=True).clamp_min(1.0)
        centred = (pos - pos.mean(0, keepdim=True)).to(torch.float32)
        pooled = (keep * x).sum(1, keepdim=True) / count
        return pooled.to(x.dtype) + x[senders.long()].mean(0), centred.float()


class Rounded(nn.Module):
    """Positions rounded to integers (a voxel grid), then read as numbers again."""
    def forward(self, pos):
        return pos.long().float().mean(0)


class IdsAsNumbers(nn.Module):
    """Node ids summed as numbers: they move with the relabelling."""
    def forward(self, x, senders):
        return x.sum(0) + senders.float().mean()


class Counts(nn.Module):
    """Each graph's node count and mean features, by a batch vector (PyG's global_mean_pool): ones
    scattered by ids that the nodes' order moves."""
    def forward(self, x, batch, graphs):
        count = x.new_zeros(graphs.shape[0]).index_add_(0, batch, x.new_ones(x.shape[0]))
        total = torch.zeros_like(graphs[:, :1].expand(-1, x.shape[1])).index_add_(0, batch, x)
        return total / count.clamp_min(1).unsqueeze(-1), count


class Ranks(nn.Module):
    """Each node's place in the input order, summed per graph: not a count, it depends on the order."""
    def forward(self, x, batch, graphs):
        return x.new_zeros(graphs.shape[0]).index_add_(0, batch, x.new_ones(x.shape[0]).cumsum(0))


class Degrees(nn.Module):
    """GCN's normalisation: features scaled by each node's in-degree to the power -1/2."""
    def forward(self, x, senders, receivers):
        degree = x.new_zeros(x.shape[0]).index_add_(0, receivers, x.new_ones(receivers.shape[0]))
        return x * degree.clamp_min(1).pow(-0.5).unsqueeze(-1)


class MaskedPool(nn.Module):
    """Attention pooling over a padded set: masked_fill, ~mask and torch.where against zeros_like."""
    def forward(self, x, mask):
        weights = torch.softmax(x.sum(-1).masked_fill(~mask, float("-inf")), dim=1)
        return (weights.unsqueeze(-1) * torch.where(mask.unsqueeze(-1), x, torch.zeros_like(x))).sum(1)


class Kept(nn.Module):
    """Positions of the points kept, the others at the origin: the origin does not move with the cloud."""
    def forward(self, pos, keep):
        return torch.where(keep.unsqueeze(-1), pos, 0.0).mean(0)


class Cubed(nn.Module):
    """Coordinates cubed, one by one: depends on the axes."""
    def forward(self, pos):
        return (pos ** 3).mean(0)


class Named(nn.Module):
    """Outputs returned in a dict, as many libraries do: unpacked in the dict's order."""
    def forward(self, x):
        return {"mean": x.mean(1), "top": x.amax(1)}


class Contracted(nn.Module):
    """einsum as equivariant code writes it: dot products of vectors, a batch's Gram matrix of centred
    points, and the pairwise distances cdist gives."""
    def forward(self, pos, vel):
        centred = pos - pos.mean(1, keepdim=True)
        dots = torch.einsum("...i,...i->...", vel, vel)
        gram = torch.einsum("bnd,bmd->bnm", centred, centred)
        return dots + gram.sum(-1) + torch.cdist(pos, pos).mean(-1)


class Mixed3(nn.Module):
    """A learned 3 x 3 matrix applied to each vector's coordinates: not a rotation-equivariant map."""
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 3))

    def forward(self, vel):
        return torch.einsum("ij,bnj->bni", self.w, vel)


class Anchored(nn.Module):
    """Distances to learned anchor points: fixed places the cloud does not move with."""
    def __init__(self):
        super().__init__()
        self.anchors = nn.Parameter(torch.randn(4, 3))

    def forward(self, pos):
        return torch.cdist(pos, self.anchors.expand(pos.shape[0], 4, 3)).sum(1)


class Covector(nn.Module):
    """A cloud's covariance applied to a 1-D vector, and that vector's squared length (torch's
    matrix-vector and vector-vector matmul)."""
    def forward(self, pos, u):
        centred = pos - pos.mean(0, keepdim=True)
        return (centred.T @ centred) @ u, u @ u


class Regrouped(nn.Module):
    """A batch of sets flattened to rows and split back: in the same order (`swap` False) the set axis is
    the set again; split the other way, rows of different sets mix."""
    def __init__(self, swap: bool = False):
        super().__init__()
        self.swap = swap

    def forward(self, x):
        b, n, f = x.shape
        rows = torch.relu(x.reshape(b * n, f))
        return rows.reshape(n, b, f).sum(1) if self.swap else rows.reshape(b, n, f)


class Scores(nn.Module):
    """Pairwise scores by baddbmm (nn.MultiheadAttention's form when it returns its weights), pooled."""
    def forward(self, x):
        scores = torch.baddbmm(x.new_zeros(1), x, x.transpose(1, 2), beta=0.5, alpha=0.25)
        return torch.softmax(scores, dim=-1).sum((1, 2))


class Ranked(nn.Module):
    """Each node's place in the input order added to its features: fixed to the order."""
    def forward(self, x):
        return x + x.new_ones(x.shape[0]).cumsum(0).unsqueeze(-1)


class Mixed1D(nn.Module):
    """Coordinates against invariant features, then that 3 x 3 map applied to a vector: the map mixes
    coordinates with features, not a rank-2 tensor of coordinates."""
    def forward(self, pos, h, u):
        return ((pos - pos.mean(0, keepdim=True)).T @ h) @ u


class Widened(nn.Module):
    """Positions doubled in a float64 island inside the model (about the origin: not a position)."""
    def forward(self, pos):
        return (pos.double() * 2).float()


class Projected(nn.Module):
    """Each element's features against a learned 1-D vector (a score per element), torch's matrix-vector matmul."""
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return x @ self.w


class Spaced(nn.Module):
    """Features against a float32 constant built in forward by an op invc keeps (linspace)."""
    def forward(self, x):
        return x @ torch.linspace(-1.0, 1.0, 4)
