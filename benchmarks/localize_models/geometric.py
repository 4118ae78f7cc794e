"""More correct models to inject bugs into, written with the ops capture lifts: a SchNet-style
continuous-filter layer, a PaiNN-style layer with vector features, a dense EGNN layer and DeepSets."""
import torch
from torch import nn


def scatter_sum(data, index, size):
    """Rows of `data` summed into `size` rows by `index`, for data of any rank."""
    out = data.new_zeros((size, *data.shape[1:]))
    return out.scatter_add(0, index.view(-1, *[1] * (data.dim() - 1)).expand_as(data), data)


class SchNetLite(nn.Module):
    def __init__(self, features=8, hidden=16, rbf=12):
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, 6.0, rbf))
        self.embed = nn.Linear(features, hidden)
        self.filter = nn.Sequential(nn.Linear(rbf, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, features))

    def forward(self, h, pos, edge_index):
        src, dst = edge_index
        d2 = ((pos[src] - pos[dst]) ** 2).sum(-1, keepdim=True)
        w = self.filter(torch.exp(-(d2 - self.centers) ** 2))
        msg = self.embed(h)[src] * w
        agg = scatter_sum(msg, dst, h.size(0))
        h = h + self.out(agg)
        return h


class PaiNNLite(nn.Module):
    def __init__(self, features=8):
        super().__init__()
        self.features = features
        self.phi = nn.Sequential(nn.Linear(features, features), nn.SiLU(), nn.Linear(features, 3 * features))
        self.radial = nn.Linear(1, 3 * features)
        self.mix = nn.Linear(features, features, bias=False)
        self.update = nn.Sequential(nn.Linear(2 * features, features), nn.SiLU(), nn.Linear(features, features))

    def forward(self, s, v, pos, edge_index):
        src, dst = edge_index
        r = pos[src] - pos[dst]
        d2 = (r * r).sum(-1, keepdim=True)
        ds, gate_v, gate_r = (self.phi(s[src]) * self.radial(d2)).view(-1, 3, self.features).unbind(1)
        dv = v[src] * gate_v.unsqueeze(-1) + r.unsqueeze(1) * gate_r.unsqueeze(-1)
        s = s + scatter_sum(ds, dst, s.size(0))
        v = v + scatter_sum(dv, dst, v.size(0))
        mixed = self.mix(v.transpose(1, 2)).transpose(1, 2)
        norms = (mixed * v).sum(-1)
        s = s + self.update(torch.cat([s, norms], dim=-1))
        return s, v


class DenseEGNN(nn.Module):
    """The first edge linear map of an EGNN, W [h_i, h_j, d2], as three maps summed."""
    def __init__(self, features=8, hidden=16):
        super().__init__()
        self.receiver, self.sender = nn.Linear(features, hidden), nn.Linear(features, hidden, bias=False)
        self.distance = nn.Linear(1, hidden, bias=False)
        self.edge_mlp = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.coord_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.node_mlp = nn.Sequential(nn.Linear(hidden + features, hidden), nn.SiLU(), nn.Linear(hidden, features))

    def forward(self, h, x):
        rel = x.unsqueeze(2) - x.unsqueeze(1)
        d2 = (rel ** 2).sum(-1, keepdim=True)
        pairs = self.receiver(h).unsqueeze(2) + self.sender(h).unsqueeze(1) + self.distance(d2)
        m = self.edge_mlp(pairs)
        x = x + (rel * self.coord_mlp(m)).mean(2)
        agg = m.sum(2)
        h = h + self.node_mlp(torch.cat([h, agg], dim=-1))
        return h, x


class DeepSets(nn.Module):
    def __init__(self, features=5, hidden=32, classes=4):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        h = self.phi(x)
        h = h - h.mean(1, keepdim=True) + h.amax(1, keepdim=True)
        pooled = h.sum(1)
        return self.rho(pooled)
