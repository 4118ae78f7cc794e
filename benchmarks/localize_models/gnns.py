import torch
import torch_geometric.nn as gnn

class GIN(torch.nn.Module):
    def __init__(self, features=5, hidden=16):
        super().__init__()
        self.conv = gnn.GINConv(torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(),
                                                    torch.nn.Linear(hidden, hidden)), train_eps=True)
    def forward(self, x, edge_index):
        return self.conv(x, edge_index)

def sage(features=5, hidden=16):
    return gnn.SAGEConv(features, hidden, aggr="max")

class Pooled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = gnn.SAGEConv(5, 16, aggr="max")
    def forward(self, x, edge_index):
        return self.conv(x, edge_index).sum(0)

class Broken(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = gnn.SAGEConv(5, 16, aggr="max")
    def forward(self, x, edge_index):
        h = self.conv(x, edge_index)
        return h[0] + h.sum(0)

def gat(features=5, hidden=8, heads=2):
    return gnn.GATConv(features, hidden, heads=heads)
