"""A Flower NumPyClient around a PyTorch MLP, written the way Flower's own PyTorch quickstart writes
one (parameters are the ``state_dict``'s arrays in order); nothing in the client is mpsnode-specific
(only its default data, a digits shard, comes from ``mpsnode.fl.data``). Run it on an mpsnode task
with

    mpsnode client run --home HOME --from client-1 --task ID --flower examples/flower_torch_client.py:make_client

It needs torch (``pip install 'mpsnode[torch]'``, which ``make setup`` does). Its data is its own:
the CSV file named by the environment variable ``DATA`` (a header row, a ``label`` column, the
other columns features scaled to [0, 1]), or else a shard of scikit-learn's bundled digits chosen
by ``SHARD=I/N`` (the same Dirichlet split the task's creator uses with ``--digits-clients N``;
``ALPHA`` and ``SEED`` as there). The model must have the task's arch: 64 inputs, one hidden
layer of 32 ReLU units, 10 outputs.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch
from flwr.client import NumPyClient
from torch import nn

from mpsnode.fl.data import digits_split

torch.set_num_threads(1)  # a small model: one thread is fastest and leaves the node its cores


def load_csv(path: str, label: str = "label") -> tuple[np.ndarray, np.ndarray]:
    with open(path) as f:
        columns = f.readline().strip().split(",")
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    at = columns.index(label)
    return np.delete(table, at, axis=1), table[:, at].astype(np.int64)


def shard() -> tuple[np.ndarray, np.ndarray]:
    if "DATA" in os.environ:  # your own CSV: a header row, features scaled to [0, 1], a label column
        return load_csv(os.environ["DATA"])
    i, n = (int(v) for v in os.environ.get("SHARD", "0/3").split("/"))
    seed = int(os.environ.get("SEED", "0"))
    alpha = os.environ.get("ALPHA", "1.0")
    data = digits_split(n, None if alpha == "iid" else float(alpha), seed).clients[i]
    return data.x, data.y


def make_net() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class TorchClient(NumPyClient):
    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int = 32, lr: float = 0.05) -> None:
        torch.manual_seed(0)
        self.net = make_net()
        self.x = torch.tensor(x, dtype=torch.float32)
        self.y = torch.tensor(y, dtype=torch.long)
        self.batch_size, self.lr = batch_size, lr

    def get_parameters(self, config):
        return [val.cpu().numpy() for _, val in self.net.state_dict().items()]

    def set_parameters(self, parameters) -> None:
        keys = self.net.state_dict().keys()
        state = OrderedDict(
            (k, torch.tensor(np.asarray(v), dtype=torch.float32))
            for k, v in zip(keys, parameters, strict=True)
        )
        self.net.load_state_dict(state, strict=True)

    def fit(self, parameters, config):
        self.set_parameters(parameters)
        optimizer = torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(int(config.get("round", 0)))
        self.net.train()
        total, seen = 0.0, 0
        for _ in range(int(config.get("local_epochs", 1))):
            order = torch.randperm(len(self.x), generator=generator)
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                optimizer.zero_grad()
                loss = loss_fn(self.net(self.x[batch]), self.y[batch])
                loss.backward()
                optimizer.step()
                total, seen = total + loss.item() * len(batch), seen + len(batch)
        return self.get_parameters({}), len(self.x), {"loss": total / max(seen, 1)}

    def evaluate(self, parameters, config):
        self.set_parameters(parameters)
        self.net.eval()
        with torch.no_grad():
            logits = self.net(self.x)
            loss = float(nn.functional.cross_entropy(logits, self.y))
            accuracy = float((logits.argmax(dim=1) == self.y).float().mean())
        return loss, len(self.x), {"accuracy": accuracy}


def make_client() -> TorchClient:
    return TorchClient(*shard())
