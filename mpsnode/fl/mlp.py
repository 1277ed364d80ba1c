"""A float MLP in numpy with the on-chain parameter layout: softmax cross-entropy, minibatch SGD.

Client-side code, not consensus. The parameters are one flat float64 vector laid out exactly as the
chain's integer model (``mpsnode.model.layer_slices``: per layer the weights row-major ``out x in``,
then the ``out`` biases), so ``quantize.quantize_weights(params, s)`` is the on-chain model and
``quantize.dequantize(weights, s)`` brings an on-chain model back. The network is the one the chain
evaluates: fully connected, ReLU on every hidden layer, the last layer's outputs are the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpsnode.consensus import model


def _layers(params: np.ndarray, arch: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer ``(W, b)`` as views into ``params`` (``W`` is ``out x in``)."""
    widths = model.validate_arch(arch)
    if params.ndim != 1 or params.shape[0] != model.param_count(widths):
        raise ValueError(f"{params.shape} parameters for an arch of {model.param_count(widths)}")
    return [
        (params[ws].reshape(widths[i + 1], widths[i]), params[bs])
        for i, (ws, bs) in enumerate(model.layer_slices(widths))
    ]


def init_params(arch: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """He-normal weights (std ``sqrt(2 / fan_in)``), zero biases, in the on-chain layout."""
    widths = model.validate_arch(arch)
    params = np.zeros(model.param_count(widths), dtype=np.float64)
    for W, _ in _layers(params, widths):
        W[...] = rng.normal(0.0, np.sqrt(2.0 / W.shape[1]), W.shape)
    return params


def forward(params: np.ndarray, arch: Sequence[int], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(logits, inputs of each layer)`` for a batch ``x`` (``n x arch[0]``)."""
    layers = _layers(params, arch)
    inputs = []
    a = x
    for i, (W, b) in enumerate(layers):
        inputs.append(a)
        z = a @ W.T + b
        a = np.maximum(z, 0.0) if i + 1 < len(layers) else z
    return a, inputs


def predict(params: np.ndarray, arch: Sequence[int], x: np.ndarray) -> np.ndarray:
    logits, _ = forward(params, arch, x)
    return np.argmax(logits, axis=1)


def accuracy(params: np.ndarray, arch: Sequence[int], x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``x`` classified as ``y`` by the float model."""
    return float(np.mean(predict(params, arch, x) == y)) if len(y) else 0.0


def loss_and_grad(
    params: np.ndarray, arch: Sequence[int], x: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy over the batch and its gradient (flat, same layout as ``params``)."""
    layers = _layers(params, arch)
    logits, inputs = forward(params, arch, x)
    n = x.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs = exp / exp.sum(axis=1, keepdims=True)
    loss = float(-np.mean(np.log(probs[np.arange(n), y] + 1e-12)))
    grad = np.zeros_like(params)
    grad_layers = _layers(grad, arch)
    dz = probs
    dz[np.arange(n), y] -= 1.0
    dz /= n
    for i in range(len(layers) - 1, -1, -1):
        W, _ = layers[i]
        gW, gb = grad_layers[i]
        gW[...] = dz.T @ inputs[i]
        gb[...] = dz.sum(axis=0)
        if i:
            dz = (dz @ W) * (inputs[i] > 0.0)  # ReLU's derivative at the layer's input
    return loss, grad


def train_sgd(
    params: np.ndarray,
    arch: Sequence[int],
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    rng: np.random.Generator,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> tuple[np.ndarray, float]:
    """``epochs`` passes of minibatch SGD over ``(x, y)`` in a fresh random order each pass.

    Returns the new parameters (``params`` is not modified) and the mean minibatch loss of the
    last epoch. Momentum starts from zero on every call.
    """
    if type(epochs) is not int or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if type(batch_size) is not int or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    p = params.astype(np.float64, copy=True)
    velocity = np.zeros_like(p)
    n = x.shape[0]
    last = float("nan")
    for _ in range(epochs):
        order = rng.permutation(n)
        losses = []
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            loss, g = loss_and_grad(p, arch, x[batch], y[batch])
            if weight_decay:
                g += weight_decay * p
            velocity = momentum * velocity + g
            p -= lr * velocity
            losses.append(loss)
        if losses:
            last = float(np.mean(losses))
    return p, last
