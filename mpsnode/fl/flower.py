"""A Flower client, driven by the mpsnode client daemon: bring your own NumPyClient.

``FlowerLearner`` is a drop-in for ``LocalLearner``: each round it hands the user's client the
chain's global model as the arrays of that client's framework (``mpsnode.fl.layouts``), calls its
``fit(parameters, config)`` with ``local_epochs`` and ``round`` in ``config``, and turns what it
returns into the chain's int16 delta (quantization, clipping counted, error feedback, exactly as
the native learner does). ``evaluate``, when the client has one, runs on the trained parameters
and its metrics are kept (``last_metrics``). The client needs no change: the adapter uses only
Flower's NumPyClient interface (``get_parameters``, ``fit``, ``evaluate``), so flwr itself is
needed by the user's client, not by mpsnode.

``load_client("module:attr")`` imports a client, or a factory returning one (called with no
arguments), from a module name or a ``.py`` path; ``detect_layout`` tells from the client's own
parameters which layout it uses and refuses, with the expected and actual shapes, a client that
does not fit the task's arch.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mpsnode.consensus import model
from mpsnode.fl import layouts, quantize
from mpsnode.fl.learner import LocalUpdate, TrainConfig, quantize_update


class FlowerError(ValueError):
    """The Flower client cannot be loaded or does not fit the task; one line says why."""


def load_client(spec: str) -> Any:
    """The NumPyClient named ``MODULE:ATTR`` (``MODULE`` a module name or a path to a .py file);
    an ``ATTR`` without ``fit`` is a factory and is called with no arguments."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise FlowerError(
            f"--flower {spec!r}: expected MODULE:ATTR, e.g. my_client:client or path/to/file.py:make_client"
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise FlowerError(f"--flower {spec!r}: no file {path}")
            loaded = importlib.util.spec_from_file_location(path.stem, path)
            if loaded is None or loaded.loader is None:
                raise FlowerError(f"--flower {spec!r}: cannot load {path}")
            module = importlib.util.module_from_spec(loaded)
            sys.modules[path.stem] = module
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except FlowerError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module: whatever it raises is one line
        raise FlowerError(
            f"--flower {spec!r}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None
    target = getattr(module, attr, None)
    if target is None:
        raise FlowerError(f"--flower {spec!r}: {module_name} has no {attr!r}")
    if not hasattr(target, "fit"):
        if not callable(target):
            raise FlowerError(f"--flower {spec!r}: {attr!r} is neither a NumPyClient nor a factory of one")
        try:
            target = target()
        except Exception as exc:  # noqa: BLE001 - the user's factory
            raise FlowerError(f"--flower {spec!r}: {attr}() failed: {type(exc).__name__}: {exc}") from None
    for method in ("get_parameters", "fit"):
        if not callable(getattr(target, method, None)):
            raise FlowerError(f"--flower {spec!r}: the client has no {method}(): not a Flower NumPyClient")
    return target


def _parameters_of(client: Any) -> list[np.ndarray]:
    try:
        return [np.asarray(a) for a in client.get_parameters({})]
    except Exception as exc:  # noqa: BLE001 - the user's client
        raise FlowerError(f"the Flower client's get_parameters failed: {type(exc).__name__}: {exc}") from None


def detect_layout(client: Any, arch: Sequence[int], layout: str | None = None) -> str:
    """The layout of the client's parameters for a task of ``arch`` (``layout`` forces one);
    ``FlowerError`` with the expected and actual shapes when no layout fits."""
    arrays = _parameters_of(client)
    candidates = [layout] if layout else list(layouts.LAYOUTS)
    problems = []
    for name in candidates:
        try:
            layouts.check_arch(arrays, name, arch)
            return name
        except layouts.LayoutError as exc:
            problems.append(str(exc))
    raise FlowerError("; ".join(problems))


class FlowerLearner:
    """``LocalLearner``'s interface around a Flower NumPyClient (see the module doc)."""

    def __init__(
        self, client: Any, arch: Sequence[int], config: TrainConfig | None = None, layout: str | None = None
    ):
        self.client = client
        self.arch = model.validate_arch(arch)
        self.layout = detect_layout(client, self.arch, layout)
        self.config = config or TrainConfig()
        self.residual = np.zeros(model.param_count(self.arch), dtype=np.float64)
        self.round = 0
        self.last_metrics: dict[str, Any] = {}

    def train_round(self, global_weights: np.ndarray, scale_bits: int, local_epochs: int) -> LocalUpdate:
        """Have the client fit from the global model; the chain's int16 delta of what it returns."""
        w = model.validate_weights(np.asarray(global_weights), self.arch)
        start = quantize.dequantize(w, scale_bits)
        self.round += 1
        config = {"local_epochs": int(local_epochs), "round": self.round}
        try:
            returned, examples, metrics = self.client.fit(
                layouts.to_arrays(start, self.arch, self.layout), config
            )
        except Exception as exc:  # noqa: BLE001 - the user's client: its failure ends the run with a reason
            raise FlowerError(f"the Flower client's fit failed: {type(exc).__name__}: {exc}") from None
        arrays = [np.asarray(a) for a in returned]
        try:
            layouts.check_arch(arrays, self.layout, self.arch)
        except layouts.LayoutError as exc:
            raise FlowerError(f"the Flower client's fit returned other shapes: {exc}") from None
        trained, _ = layouts.from_arrays(arrays, self.layout)
        change = trained - start
        if self.config.error_feedback:
            change = change + self.residual
        delta, clipped = quantize_update(change, scale_bits)
        if self.config.error_feedback:
            self.residual = change - quantize.dequantize(delta, scale_bits)
        self.last_metrics = dict(metrics or {})
        evaluate = getattr(self.client, "evaluate", None)
        if callable(evaluate):
            try:
                loss, _, eval_metrics = evaluate(arrays, config)
                self.last_metrics.update({"eval_loss": float(loss), **dict(eval_metrics or {})})
            except Exception as exc:  # noqa: BLE001 - evaluation is advisory: logged, never fatal
                self.last_metrics["evaluate_error"] = f"{type(exc).__name__}: {exc}"
        reported = self.last_metrics.get("loss", self.last_metrics.get("eval_loss"))
        loss = float(reported) if isinstance(reported, (int, float)) else math.nan
        return LocalUpdate(delta, change, clipped, loss, int(examples))

    def reset(self) -> None:
        """Forget the error-feedback residual."""
        self.residual[...] = 0.0
