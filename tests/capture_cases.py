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


# -- Models as their users write them (tests/test_capture.py) --------------------------------------
def gin(features: int = 5, hidden: int = 16):
    """PyG's GINConv takes its MLP as an argument, so it needs a factory."""
    from torch_geometric.nn import GINConv
    return GINConv(nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden)), train_eps=True)


def unsorted_segment_sum(data, segment_ids, num_segments):
    result = data.new_full((num_segments, data.size(1)), 0)
    segment_ids = segment_ids.unsqueeze(-1).expand(-1, data.size(1))
    result.scatter_add_(0, segment_ids, data)
    return result


def unsorted_segment_mean(data, segment_ids, num_segments):
    result = data.new_full((num_segments, data.size(1)), 0)
    count = data.new_full((num_segments, data.size(1)), 0)
    segment_ids = segment_ids.unsqueeze(-1).expand(-1, data.size(1))
    result.scatter_add_(0, segment_ids, data)
    count.scatter_add_(0, segment_ids, torch.ones_like(data))
    return result / count.clamp(min=1)


class EGCL(nn.Module):
    """An E(n)-equivariant graph layer (Satorras et al. 2021), as its reference code writes it."""
    def __init__(self, features: int = 8, hidden: int = 16):
        super().__init__()
        self.edge_mlp = nn.Sequential(nn.Linear(2 * features + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                      nn.SiLU())
        self.node_mlp = nn.Sequential(nn.Linear(hidden + features, hidden), nn.SiLU(), nn.Linear(hidden, features))
        self.coord_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, h, x, edge_index):
        row, col = edge_index
        diff = x[row] - x[col]
        radial = torch.sum(diff ** 2, 1).unsqueeze(1)
        m = self.edge_mlp(torch.cat([h[row], h[col], radial], dim=1))
        x = x + unsorted_segment_mean(diff * self.coord_mlp(m), row, x.size(0))
        agg = unsorted_segment_sum(m, row, h.size(0))
        h = h + self.node_mlp(torch.cat([h, agg], dim=1))
        return h, x


class PointNet(nn.Module):
    """A PointNet classifier (Qi et al. 2017) without its input transforms: points [B, 3, N]."""
    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv1d(3, 32, 1), nn.Conv1d(32, 64, 1)
        self.bn1, self.bn2 = nn.BatchNorm1d(32), nn.BatchNorm1d(64)
        self.fc = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, classes))
        for bn in (self.bn1, self.bn2):  # statistics as after training, so a dropped one shows
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.5, 0.5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.max(x, 2, keepdim=True)[0]
        x = x.view(-1, 64)
        return self.fc(x)


class TokenViT(nn.Module):
    """A Hugging Face ViT over a set of tokens: with patches of one pixel, the image [B, C, N, 1] is N
    tokens of C features, each projected on its own; its position table is interpolated to N."""
    def __init__(self, hidden: int = 32):
        super().__init__()
        from transformers import ViTConfig, ViTModel
        config = ViTConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                           image_size=(16, 1), patch_size=1, num_channels=8)
        self.vit = ViTModel(config, add_pooling_layer=False)

    def forward(self, tokens):
        return self.vit(pixel_values=tokens, interpolate_pos_encoding=True).last_hidden_state


class PlainCloud(nn.Module):
    """A point-cloud regressor that knows nothing of rotations: what frame averaging is for."""
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, 3)

    def forward(self, pos, q):
        return self.head(self.net(torch.cat([pos, q], dim=-1)).mean(1))


class SizedByData(nn.Module):
    """A readout that sizes its output from the data (PyG's global_add_pool without size)."""
    def forward(self, x, batch):
        from torch_geometric.nn import global_add_pool
        return global_add_pool(x, batch)
