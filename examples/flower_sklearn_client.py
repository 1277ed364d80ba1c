"""A Flower NumPyClient around a scikit-learn MLPClassifier, of the kind Flower's own scikit-learn
examples show; nothing in the client is mpsnode-specific (only its default data, a digits shard,
comes from ``mpsnode.fl.data``). Run it on an mpsnode task with

    mpsnode client run --home HOME --from client-1 --task ID --flower examples/flower_sklearn_client.py:make_client

Its data is its own: the CSV file named by the environment variable ``DATA`` (a header row, a
``label`` column, the other columns features scaled to [0, 1]), or else a shard of scikit-learn's
bundled digits chosen by ``SHARD=I/N`` (the same Dirichlet split the task's creator uses with
``--digits-clients N``; the held-back validation set is in no shard). The model must have the
task's arch: 64 inputs, one hidden layer of 32 ReLU units, 10 outputs.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from flwr.client import NumPyClient
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss
from sklearn.neural_network import MLPClassifier

from mpsnode.fl.data import digits_split

CLASSES = np.arange(10)


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


class MLPClient(NumPyClient):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y
        self.model = MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.01, random_state=0)
        self.model.partial_fit(x[:1], y[:1], classes=CLASSES)  # sizes coefs_ and intercepts_

    def get_parameters(self, config):
        return [*self.model.coefs_, *self.model.intercepts_]

    def set_parameters(self, parameters) -> None:
        n = len(parameters) // 2
        self.model.coefs_ = [np.array(p) for p in parameters[:n]]
        self.model.intercepts_ = [np.array(p) for p in parameters[n:]]

    def fit(self, parameters, config):
        self.set_parameters(parameters)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for _ in range(int(config.get("local_epochs", 1))):
                self.model.partial_fit(self.x, self.y, classes=CLASSES)
        return self.get_parameters({}), len(self.x), {"loss": float(self.model.loss_)}

    def evaluate(self, parameters, config):
        self.set_parameters(parameters)
        proba = self.model.predict_proba(self.x)
        accuracy = float(np.mean(np.argmax(proba, axis=1) == self.y))
        return float(log_loss(self.y, proba, labels=CLASSES)), len(self.x), {"accuracy": accuracy}


def make_client() -> MLPClient:
    return MLPClient(*shard())
