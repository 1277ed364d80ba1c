"""Parameter layouts, both ways: the chain's flat vector and the arrays other frameworks keep.

The chain's layout (``consensus.model.layer_slices``) is, per layer, the weights row-major
``out x in`` and then the ``out`` biases, all in one flat vector. Other frameworks keep a list of
arrays per model:

* ``TORCH``: a PyTorch ``nn.Sequential`` of ``Linear`` and ``ReLU`` in ``state_dict`` order:
  per layer ``weight`` (``out x in``) then ``bias`` (``out``); what a Flower NumPyClient around a
  torch model returns from ``get_parameters``;
* ``SKLEARN``: scikit-learn's ``MLPClassifier``: all ``coefs_`` (``in x out``) then all
  ``intercepts_``; what a Flower NumPyClient around an MLPClassifier returns.

``to_arrays`` and ``from_arrays`` convert exactly (float64, no rounding), and ``arch_of`` reads
the architecture off the arrays, refusing shapes that are not a chain MLP with the expected and
actual shapes named. Client-side code, not consensus.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from mpsnode.consensus import model

TORCH = "torch"
SKLEARN = "sklearn"
LAYOUTS = (TORCH, SKLEARN)


class LayoutError(ValueError):
    """Arrays that are not a chain MLP in the named layout; the message gives the shapes."""


def _check(layout: str) -> None:
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}: one of {', '.join(LAYOUTS)}")


def _shapes(arrays: Sequence[Any]) -> list[tuple[int, ...]]:
    return [tuple(np.shape(a)) for a in arrays]


def expected_shapes(arch: Sequence[int], layout: str) -> list[tuple[int, ...]]:
    """The array shapes of an MLP of ``arch`` in ``layout``."""
    _check(layout)
    widths = model.validate_arch(arch)
    pairs = list(itertools.pairwise(widths))
    if layout == TORCH:
        return [s for i, o in pairs for s in ((o, i), (o,))]
    return [(i, o) for i, o in pairs] + [(o,) for _, o in pairs]


def arch_of(arrays: Sequence[Any], layout: str) -> tuple[int, ...]:
    """The widths of the MLP ``arrays`` hold in ``layout``; ``LayoutError`` if they hold none."""
    _check(layout)
    shapes = _shapes(arrays)
    if not shapes or len(shapes) % 2:
        raise LayoutError(f"an MLP is weight and bias arrays per layer; got {len(shapes)} arrays {shapes}")
    layers = len(shapes) // 2
    if layout == TORCH:
        weights = shapes[0::2]
        if any(len(w) != 2 for w in weights):
            raise LayoutError(f"torch layout: weight, bias per layer; got shapes {shapes}")
        arch = (weights[0][1], *(w[0] for w in weights))
    else:
        weights = shapes[:layers]
        if any(len(w) != 2 for w in weights):
            raise LayoutError(
                f"sklearn layout: every coefs_ first, then every intercepts_; got shapes {shapes}"
            )
        arch = (weights[0][0], *(w[1] for w in weights))
    try:
        want = expected_shapes(arch, layout)
    except ValueError as exc:
        raise LayoutError(f"the arrays' widths {arch} are not an MLP the chain runs: {exc}") from None
    if shapes != want:
        raise LayoutError(f"{layout} layout of arch {list(arch)} expects shapes {want}, got {shapes}")
    return arch


def check_arch(arrays: Sequence[Any], layout: str, arch: Sequence[int]) -> None:
    """``LayoutError`` unless ``arrays`` are an MLP of exactly ``arch`` (the task's)."""
    want = expected_shapes(arch, layout)
    got = _shapes(arrays)
    if got != want:
        raise LayoutError(
            f"the model does not fit the task: the task's arch {list(arch)} needs {layout} arrays of shapes "
            f"{want}, the model has {got}"
        )


def to_arrays(params: np.ndarray, arch: Sequence[int], layout: str) -> list[np.ndarray]:
    """The chain's flat ``params`` as the arrays of ``layout`` (new float64 arrays)."""
    _check(layout)
    widths = model.validate_arch(arch)
    flat = np.asarray(params, dtype=np.float64)
    if flat.ndim != 1 or flat.shape[0] != model.param_count(widths):
        raise LayoutError(f"{flat.shape} parameters for an arch of {model.param_count(widths)}")
    layers = [
        (flat[ws].reshape(widths[i + 1], widths[i]).copy(), flat[bs].copy())
        for i, (ws, bs) in enumerate(model.layer_slices(widths))
    ]
    if layout == TORCH:
        return [a for w, b in layers for a in (w, b)]
    return [w.T.copy() for w, _ in layers] + [b for _, b in layers]


def from_arrays(arrays: Sequence[Any], layout: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(flat params, arch)`` of the arrays of ``layout``; exact inverse of ``to_arrays``."""
    arch = arch_of(arrays, layout)
    widths = list(arch)
    flat = np.zeros(model.param_count(widths), dtype=np.float64)
    n = len(widths) - 1
    for i, (ws, bs) in enumerate(model.layer_slices(widths)):
        if layout == TORCH:
            w, b = np.asarray(arrays[2 * i]), np.asarray(arrays[2 * i + 1])
        else:
            w, b = np.asarray(arrays[i]).T, np.asarray(arrays[n + i])
        flat[ws] = w.astype(np.float64).reshape(-1)
        flat[bs] = b.astype(np.float64)
    return flat, arch


def sklearn_arrays(mlp: Any) -> list[np.ndarray]:
    """A fitted scikit-learn ``MLPClassifier``'s parameters in the ``SKLEARN`` layout (copies)."""
    if not hasattr(mlp, "coefs_"):
        raise LayoutError(
            "the MLPClassifier is not fitted yet: it has no coefs_ (call fit or partial_fit first)"
        )
    if getattr(mlp, "activation", "relu") != "relu":
        raise LayoutError(f"the chain's MLP uses ReLU; the MLPClassifier uses {mlp.activation!r}")
    return [np.array(c, dtype=np.float64) for c in mlp.coefs_] + [
        np.array(b, dtype=np.float64) for b in mlp.intercepts_
    ]


def set_sklearn_arrays(mlp: Any, arrays: Sequence[Any]) -> None:
    """Load ``SKLEARN``-layout arrays into a fitted ``MLPClassifier`` of the same shapes."""
    check_arch(arrays, SKLEARN, arch_of(sklearn_arrays(mlp), SKLEARN))
    n = len(arrays) // 2
    mlp.coefs_ = [np.array(a, dtype=np.float64) for a in arrays[:n]]
    mlp.intercepts_ = [np.array(a, dtype=np.float64) for a in arrays[n:]]


def torch_arrays(net: Any) -> list[np.ndarray]:
    """A PyTorch ``nn.Sequential`` of ``Linear`` and ``ReLU`` (ReLU between the Linears, none after
    the last) as ``TORCH``-layout arrays, float64 copies in ``state_dict`` order; ``LayoutError``
    naming the first module that is not part of a chain MLP."""
    import torch  # noqa: PLC0415 - the optional [torch] extra: only a torch model needs it

    if not isinstance(net, torch.nn.Sequential):
        raise LayoutError(f"the chain's MLP is an nn.Sequential of Linear and ReLU; got {type(net).__name__}")
    modules = list(net)
    want_linear = True
    for i, module in enumerate(modules):
        kind = torch.nn.Linear if want_linear else torch.nn.ReLU
        if not isinstance(module, kind) or (want_linear and module.bias is None):
            raise LayoutError(
                f"module {i} of the nn.Sequential is {module!r}; the chain's MLP alternates Linear (with bias) "
                "and ReLU, ending in a Linear"
            )
        want_linear = not want_linear
    if want_linear:
        raise LayoutError("the nn.Sequential ends in a ReLU (or is empty); the chain's MLP ends in a Linear")
    arrays = [value.detach().cpu().numpy().astype(np.float64) for value in net.state_dict().values()]
    arch_of(arrays, TORCH)
    return arrays


def set_torch_arrays(net: Any, arrays: Sequence[Any]) -> None:
    """Load ``TORCH``-layout arrays into ``net`` (an MLP ``torch_arrays`` accepts, same shapes),
    each in the dtype its parameter already has."""
    import torch  # noqa: PLC0415 - the optional [torch] extra

    check_arch(arrays, TORCH, arch_of(torch_arrays(net), TORCH))
    state = net.state_dict()
    net.load_state_dict(
        {
            key: torch.as_tensor(np.asarray(a), dtype=state[key].dtype)
            for key, a in zip(state, arrays, strict=True)
        }
    )
