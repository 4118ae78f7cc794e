"""Torch models written as their users write them, which tests/torch_models.inv captures: PyG convolutions,
an EGNN layer in the style of Satorras et al.'s E_GCL, and a PointNet classifier. Each factory builds its
model from a fixed seed and moves every weight and buffer off its initial value (biases and batch-norm
statistics start at 0 and 1, GIN's eps at 0), so a test that builds the same factory gets the same model
that invc captured, and an op that ignores a weight shows."""
import torch
import torch_geometric.nn as gnn
from torch import nn

FEATURES = 8   # node features of the graph models
HIDDEN = 32


def randomized(make, seed: int = 0) -> nn.Module:
    """`make()` under a fixed seed, every float weight and buffer perturbed, variances kept positive."""
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        model = make()
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.add_(0.2 * torch.randn_like(t))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


class GIN(nn.Module):
    def __init__(self):
        super().__init__()
        mlp = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN))
        self.conv = gnn.GINConv(mlp, train_eps=True)

    def forward(self, x, edge_index):
        return self.conv(x, edge_index)


def gin(seed: int = 0):
    return randomized(GIN, seed)


def sage(seed: int = 0):
    return randomized(lambda: gnn.SAGEConv(FEATURES, HIDDEN, aggr="max"), seed)


def gat(seed: int = 0):
    """With PyG's default self loops: edges kept by a mask, then arange(N) appended."""
    return randomized(lambda: gnn.GATConv(FEATURES, HIDDEN // 4, heads=4), seed)


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
    """E_GCL of Satorras et al. (vgsatorras/egnn), residual, mean coordinate aggregation; it returns
    the features and coordinates (the original also returns its `edge_attr` argument, None here)."""
    def __init__(self, features=FEATURES, hidden=HIDDEN, attention=True):
        super().__init__()
        act = nn.SiLU()
        self.attention = attention
        self.edge_mlp = nn.Sequential(nn.Linear(2 * features + 1, hidden), act, nn.Linear(hidden, hidden), act)
        self.node_mlp = nn.Sequential(nn.Linear(hidden + features, hidden), act, nn.Linear(hidden, features))
        self.coord_mlp = nn.Sequential(nn.Linear(hidden, hidden), act, nn.Linear(hidden, 1, bias=False))
        self.att_mlp = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid())

    def forward(self, h, edge_index, coord):
        row, col = edge_index
        coord_diff = coord[row] - coord[col]
        radial = torch.sum(coord_diff ** 2, 1).unsqueeze(1)
        edge_feat = self.edge_mlp(torch.cat([h[row], h[col], radial], dim=1))
        if self.attention:
            edge_feat = edge_feat * self.att_mlp(edge_feat)
        coord = coord + unsorted_segment_mean(coord_diff * self.coord_mlp(edge_feat), row, coord.size(0))
        agg = unsorted_segment_sum(edge_feat, row, h.size(0))
        h = h + self.node_mlp(torch.cat([h, agg], dim=1))
        return h, coord


def egnn(seed: int = 0):
    return randomized(EGCL, seed)


class PointNet(nn.Module):
    """The PointNet classifier without its input transforms: shared per-point MLPs as Conv1d(k=1) with
    batch norm over points [B, 3, N], a max over points, a head with batch norm and dropout."""
    def __init__(self, classes=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(3, 64, 1), nn.BatchNorm1d(64)
        self.conv2, self.bn2 = nn.Conv1d(64, 128, 1), nn.BatchNorm1d(128)
        self.conv3, self.bn3 = nn.Conv1d(128, 256, 1), nn.BatchNorm1d(256)
        self.fc1, self.bn4 = nn.Linear(256, 128), nn.BatchNorm1d(128)
        self.dropout = nn.Dropout(0.3)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        x = torch.max(x, 2, keepdim=True)[0]
        x = x.view(-1, 256)
        x = torch.relu(self.bn4(self.fc1(x)))
        return self.fc2(self.dropout(x))


def pointnet(seed: int = 0):
    return randomized(PointNet, seed)


class TokenViT(nn.Module):
    """A Hugging Face ViT over a set of tokens: with patches of one pixel, the image [B, C, N, 1] is N
    tokens of C features, each projected on its own; its position table is interpolated to N."""
    def __init__(self, hidden: int = 32):
        super().__init__()
        from transformers import ViTConfig, ViTModel
        config = ViTConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                           image_size=(16, 1), patch_size=1, num_channels=FEATURES)
        self.vit = ViTModel(config, add_pooling_layer=False)

    def forward(self, tokens):
        return self.vit(pixel_values=tokens, interpolate_pos_encoding=True).last_hidden_state


class PlainCloud(nn.Module):
    """A point-cloud regressor that knows nothing of rotations: what frame averaging is for."""
    def __init__(self, hidden: int = HIDDEN):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, 3)

    def forward(self, pos, q):
        return self.head(self.net(torch.cat([pos, q], dim=-1)).mean(1))


class SizedByData(nn.Module):
    """A readout that sizes its output from the data (PyG's global_add_pool without size)."""
    def forward(self, x, batch):
        return gnn.global_add_pool(x, batch)


def gcn(seed: int = 0):
    """With PyG's default normalisation: self loops, in-degrees to the power -1/2, infinities masked to 0."""
    return randomized(lambda: gnn.GCNConv(FEATURES, HIDDEN), seed)


class Readout(nn.Module):
    """A GCN layer, then PyG's global_mean_pool over a batch vector: one row per graph."""
    def __init__(self):
        super().__init__()
        self.conv = gnn.GCNConv(FEATURES, HIDDEN)

    def forward(self, x, edge_index, batch, graphs):
        return gnn.global_mean_pool(self.conv(x, edge_index).relu(), batch, size=graphs.shape[0])


def readout(seed: int = 0):
    return randomized(Readout, seed)


def encoder(seed: int = 0):
    """nn.TransformerEncoderLayer over a set (no positions): nn.MultiheadAttention runs seq-first inside,
    merging the set with the batch and splitting them back."""
    return randomized(lambda: nn.TransformerEncoderLayer(FEATURES, 2, dim_feedforward=16, dropout=0.0,
                                                         batch_first=True), seed)


class PaddedSet(nn.Module):
    """An encoder layer over padded sets, `mask` True at real elements: scaled_dot_product_attention
    with the key padding mask as a float mask."""
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(FEATURES, 2, dim_feedforward=16, dropout=0.0, batch_first=True)

    def forward(self, x, mask):
        return self.layer(x, src_key_padding_mask=~mask)


def padded(seed: int = 0):
    return randomized(PaddedSet, seed)
