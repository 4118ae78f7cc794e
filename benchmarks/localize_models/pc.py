"""An EGNN layer (Satorras et al. 2021) and a PointNet classifier, written as their users write them."""
import torch
from torch import nn


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
    def __init__(self, features=8, hidden=16):
        super().__init__()
        self.edge_mlp = nn.Sequential(nn.Linear(2 * features + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
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
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 32, 1)
        self.conv2 = nn.Conv1d(32, 64, 1)
        self.bn1 = nn.BatchNorm1d(32)
        self.bn2 = nn.BatchNorm1d(64)
        self.fc = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, classes))

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        # was torch.max(x, 2, keepdim=True)[0]: its kept ATen op fails in torch (see BENCHMARKS.md, issue 23)
        x = x.amax(2, keepdim=True)
        x = x.view(-1, 64)
        return self.fc(x)
