"""Datasets for federated learning: the bundled digits set, user arrays, client splits, the validation set.

Client-side code, not consensus: floats are fine here. A ``Dataset`` holds float64 inputs (the values
the model sees, already scaled to a small range such as [0, 1]) and integer labels. The same object
serves every use: a client's local training data, the held-back validation set that CREATE_TASK
quantizes to int16 at the task's scale, or any user arrays passed through ``from_arrays``.

Splits across clients are IID (a random partition into near-equal parts) or non-IID with the usual
Dirichlet label skew: for each class, the shares of that class's samples held by the clients are drawn
from ``Dirichlet(alpha, ..., alpha)``. Small ``alpha`` (0.1) gives each client one or two classes;
large ``alpha`` (100) approaches IID.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mpsnode.consensus import model
from mpsnode.consensus.limits import MAX_CLASSES  # labels travel as uint8 in CREATE_TASK
from mpsnode.fl import quantize

INT16_MAX = (1 << 15) - 1
DIRICHLET_TRIES = 1000  # redraws allowed before a split with min_samples per client is declared impossible


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    """Inputs ``x`` (float64, ``n x features``) and labels ``y`` (int64, ``0..n_classes - 1``)."""

    x: np.ndarray
    y: np.ndarray
    n_classes: int

    def __post_init__(self) -> None:
        if not isinstance(self.x, np.ndarray) or self.x.ndim != 2 or self.x.dtype != np.float64:
            raise ValueError("Dataset.x must be a 2-D float64 array (samples x features)")
        if not isinstance(self.y, np.ndarray) or self.y.ndim != 1 or self.y.dtype != np.int64:
            raise ValueError("Dataset.y must be a 1-D int64 array of labels")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.x.shape[0]} inputs but {self.y.shape[0]} labels")
        if type(self.n_classes) is not int or not 2 <= self.n_classes <= MAX_CLASSES:
            raise ValueError(f"n_classes must be an int in 2..{MAX_CLASSES}, got {self.n_classes!r}")
        if self.y.size and (int(self.y.min()) < 0 or int(self.y.max()) >= self.n_classes):
            raise ValueError(f"labels must lie in 0..{self.n_classes - 1}")
        if not np.isfinite(self.x).all():
            raise ValueError("Dataset.x holds NaN or infinite values")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def features(self) -> int:
        return int(self.x.shape[1])

    def subset(self, indices: np.ndarray) -> Dataset:
        """The samples at ``indices`` (copied), in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(self.x[idx].copy(), self.y[idx].copy(), self.n_classes)

    def label_counts(self) -> np.ndarray:
        """How many samples of each class (length ``n_classes``)."""
        return np.bincount(self.y, minlength=self.n_classes)


@dataclass(frozen=True, slots=True, eq=False)
class FederatedSplit:
    """Each client's local data and the held-back validation set (disjoint)."""

    clients: tuple[Dataset, ...]
    validation: Dataset


def from_arrays(x: np.ndarray, y: np.ndarray, n_classes: int | None = None) -> Dataset:
    """A ``Dataset`` from any numpy arrays: ``x`` (n x features, numbers), ``y`` (n integer labels).

    ``n_classes`` defaults to ``max(y) + 1``. Scale ``x`` beforehand so that ``x * 2^scale_bits``
    fits int16 (``quantize_validation`` refuses a validation set that would be clipped).
    """
    xa = np.asarray(x)
    ya = np.asarray(y)
    if xa.ndim != 2 or xa.dtype.kind not in "iuf":
        raise ValueError("x must be a 2-D numeric array (samples x features)")
    if ya.ndim != 1 or ya.dtype.kind not in "iu":
        raise ValueError("y must be a 1-D integer array of labels")
    classes = int(ya.max()) + 1 if n_classes is None and ya.size else n_classes
    if classes is None:
        raise ValueError("n_classes is needed for an empty dataset")
    return Dataset(xa.astype(np.float64), ya.astype(np.int64), int(classes))


def load_digits() -> Dataset:
    """scikit-learn's bundled 8 x 8 digits (1797 samples, 64 features, 10 classes), pixels scaled to [0, 1].

    The data ship inside scikit-learn: nothing is downloaded.
    """
    # scikit-learn is heavy (about half a second to import) and only the bundled digits need it
    from sklearn.datasets import load_digits as sk_load_digits  # noqa: PLC0415

    bunch = sk_load_digits()
    return from_arrays(np.asarray(bunch.data, dtype=np.float64) / 16.0, np.asarray(bunch.target), 10)


def split_validation(data: Dataset, fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """``(train, validation)``: a stratified split holding back ``fraction`` of every class."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    val_idx: list[np.ndarray] = []
    for c in range(data.n_classes):
        idx = rng.permutation(np.flatnonzero(data.y == c))
        n_val = round(fraction * idx.size)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    train = np.sort(np.concatenate(train_idx))
    val = np.sort(np.concatenate(val_idx))
    if val.size == 0 or train.size == 0:
        raise ValueError("the split left the training or the validation set empty")
    return data.subset(train), data.subset(val)


def partition_iid(n_samples: int, n_clients: int, seed: int = 0) -> list[np.ndarray]:
    """A random partition of ``range(n_samples)`` into ``n_clients`` parts of near-equal size."""
    _check_clients(n_samples, n_clients, 1)
    perm = np.random.default_rng(seed).permutation(n_samples)
    return [np.sort(part) for part in np.array_split(perm, n_clients)]


def partition_dirichlet(
    labels: np.ndarray, n_clients: int, alpha: float, seed: int = 0, min_samples: int = 10
) -> list[np.ndarray]:
    """Label-skewed partition: each class is shared among clients in ``Dirichlet(alpha)`` proportions.

    Draws again (from the same seeded generator) until every client holds at least ``min_samples``
    samples; raises ``ValueError`` when that fails ``DIRICHLET_TRIES`` times (lower ``min_samples``
    or raise ``alpha``).
    """
    labels = np.asarray(labels)
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha!r}")
    _check_clients(labels.size, n_clients, min_samples)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(n_clients, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * idx.size).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(p.size for p in out) >= min_samples:
            return out
    raise ValueError(
        f"no Dirichlet({alpha}) split of {labels.size} samples over {n_clients} clients gave "
        f"every client {min_samples} samples in {DIRICHLET_TRIES} draws"
    )


def _check_clients(n_samples: int, n_clients: int, min_samples: int) -> None:
    if type(n_clients) is not int or n_clients < 1:
        raise ValueError(f"n_clients must be a positive int, got {n_clients!r}")
    if type(min_samples) is not int or min_samples < 1:
        raise ValueError(f"min_samples must be a positive int, got {min_samples!r}")
    if n_samples < n_clients * min_samples:
        raise ValueError(f"{n_samples} samples cannot give {n_clients} clients {min_samples} each")


def make_split(
    data: Dataset,
    n_clients: int,
    *,
    alpha: float | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_samples: int = 10,
) -> FederatedSplit:
    """Hold back a stratified validation set, then share the rest among ``n_clients``.

    ``alpha=None`` splits IID; a number splits non-IID with ``Dirichlet(alpha)`` label skew. The same
    ``seed`` always gives the same split.
    """
    train, validation = split_validation(data, val_fraction, seed)
    if alpha is None:
        parts = partition_iid(len(train), n_clients, seed)
    else:
        parts = partition_dirichlet(train.y, n_clients, alpha, seed, min_samples)
    return FederatedSplit(tuple(train.subset(p) for p in parts), validation)


def quantize_validation(validation: Dataset, scale_bits: int) -> tuple[bytes, bytes]:
    """CREATE_TASK's ``val_x`` (int16 little-endian at ``2^-scale_bits``) and ``val_y`` (uint8).

    Raises ``ValueError`` if an input would not fit int16 at this scale: the chain would then judge
    the model on inputs different from the ones the clients train on.
    """
    model.validate_scale_bits(scale_bits)
    if len(validation) == 0:
        raise ValueError("the validation set is empty")
    peak = float(np.abs(validation.x).max()) * float(1 << scale_bits)
    if round(peak) > INT16_MAX:
        raise ValueError(
            f"validation inputs reach {peak:.0f} at scale 2^-{scale_bits}, beyond int16; "
            "scale the inputs down or lower scale_bits"
        )
    val_x = quantize.quantize_inputs(validation.x, scale_bits).astype("<i2").tobytes()
    val_y = validation.y.astype(np.uint8).tobytes()
    return val_x, val_y


def decode_validation(val_x: bytes, val_y: bytes, arch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The int16 ``samples x arch[0]`` matrix and uint8 labels of a task's validation set, as stored."""
    x = np.frombuffer(val_x, dtype="<i2").reshape(-1, int(arch[0])).astype(np.int16)
    return x, np.frombuffer(val_y, dtype=np.uint8).copy()


# ---------------------------------------------------------------------------------------------
# Data descriptions every party of a task reproduces (the CLI, the demo, the benchmarks)


def parse_alpha(text: str | None) -> float | None:
    """``None``/``iid`` for an IID split, else a positive Dirichlet concentration."""
    if text is None or text.lower() == "iid":
        return None
    try:
        alpha = float(text)
    except ValueError:
        raise ValueError(f"--alpha {text!r}: give a positive number or 'iid'") from None
    if not alpha > 0:
        raise ValueError(f"--alpha {text!r}: must be positive (or 'iid')")
    return alpha


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` with ``0 <= I < N``."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--digits-shard {text!r}: expected I/N, e.g. 3/10") from None
    if not 0 <= i < n:
        raise ValueError(f"--digits-shard {text!r}: need 0 <= I < N")
    return i, n


def digits_split(n_clients: int, alpha: float | None, seed: int) -> FederatedSplit:
    """The digits split every party of a digits task reproduces from ``(n_clients, alpha, seed)``."""
    return make_split(load_digits(), n_clients, alpha=alpha, seed=seed)


def learner_seed(split_seed: int, shard: int) -> int:
    """A distinct minibatch order per shard, fixed by the split seed."""
    return split_seed * 1009 + shard


def load_arrays(path: str, what: str, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of an .npz file (numpy's own format, read without pickles); one
    ``ValueError`` naming the flag ``what`` and the file for anything else."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError(
                    f"{what} {path}: an .npz archive is needed, with arrays {', '.join(map(repr, names))}"
                )
            missing = [n for n in names if n not in data]
            if missing:
                wanted, lacking = ", ".join(map(repr, names)), ", ".join(map(repr, missing))
                raise ValueError(f"{what} {path}: needs arrays {wanted}; missing {lacking}")
            return {n: data[n] for n in data.files}
    except (OSError, EOFError) as exc:
        raise ValueError(f"{what} {path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    except (ValueError, KeyError) as exc:
        if str(exc).startswith(what):
            raise
        raise ValueError(f"{what} {path}: not an .npz or .npy file (numpy's binary formats)") from None


def load_array(path: str, what: str) -> np.ndarray:
    """The one array of an .npy file (numpy's own format, read without pickles); one ``ValueError``
    naming the flag ``what`` and the file for anything else."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, EOFError) as exc:
        raise ValueError(f"{what} {path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    except ValueError:
        raise ValueError(f"{what} {path}: not an .npy file (numpy's binary format, np.save)") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise ValueError(f"{what} {path}: an .npy file with one array is needed, not an .npz archive")
    return array


def load_csv(path: str, what: str, label_column: str = "label") -> Dataset:
    """A ``Dataset`` from a CSV file with a header row: ``label_column`` holds the integer labels,
    every other column a numeric feature. One ``ValueError`` naming the flag, the file, the line
    and the column for a ragged row, a non-numeric feature or a label that is no class number."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{what} {path}: not a text CSV file ({exc})") from None
    if not rows:
        raise ValueError(f"{what} {path}: empty; a CSV with a header row is needed")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise ValueError(
            f"{what} {path}: no column {label_column!r} for the labels (columns: {', '.join(header)}); "
            "name it with --label-column"
        )
    at = header.index(label_column)
    x_rows: list[list[float]] = []
    y_rows: list[int] = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue  # a blank line
        if len(row) != len(header):
            raise ValueError(f"{what} {path}: line {line} has {len(row)} fields, the header {len(header)}")
        features = []
        for name, cell in zip(header, row, strict=True):
            if name == label_column:
                continue
            try:
                value = float(cell)
            except ValueError:
                raise ValueError(
                    f"{what} {path}: line {line}, column {name!r}: {cell!r} is not a number"
                ) from None
            if not np.isfinite(value):
                raise ValueError(
                    f"{what} {path}: line {line}, column {name!r}: {cell!r} is not a finite number"
                )
            features.append(value)
        label = row[at].strip()
        if not label.isdigit():
            raise ValueError(
                f"{what} {path}: line {line}: label {label!r} is not a class number (0, 1, 2, ...)"
            )
        x_rows.append(features)
        y_rows.append(int(label))
    if not y_rows:
        raise ValueError(f"{what} {path}: no data rows under the header")
    return from_arrays(
        np.array(x_rows, dtype=np.float64), np.array(y_rows, dtype=np.int64), max(2, max(y_rows) + 1)
    )


def load_dataset(path: str, what: str, label_column: str = "label", labels: str | None = None) -> Dataset:
    """Your own data: an .npz (``x``, ``y``), a pair of .npy files (``path`` the samples, ``labels``
    the labels) or a .csv with a header row and a label column."""
    suffix = path.lower().rsplit(".", 1)[-1] if "." in path else ""
    if labels is not None and suffix != "npy":
        raise ValueError(f"--labels goes with an .npy file of samples, not {path}")
    if suffix == "csv":
        return load_csv(path, what, label_column)
    if suffix == "npy":
        if labels is None:
            raise ValueError(f"{what} {path}: an .npy of samples needs its labels: --labels LABELS.npy")
        x, y = load_array(path, what), load_array(labels, "--labels")
        if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{what} {path} and --labels {labels}: need samples x features and one label per sample, "
                f"got shapes {x.shape} and {y.shape}"
            )
        classes = max(2, int(y.max()) + 1) if y.size and y.dtype.kind in "iu" else None
        return from_arrays(x, y, classes)
    return load_npz(path, what)


def check_fits(data: Dataset, arch: Sequence[int], what: str) -> None:
    """One ``ValueError`` unless ``data`` fits a task of ``arch``: ``arch[0]`` features, labels
    below ``arch[-1]``; checked before anything is signed."""
    if data.features != arch[0]:
        raise ValueError(
            f"{what}: the data has {data.features} features; the task's arch {list(arch)} takes {arch[0]}"
        )
    if data.y.size and int(data.y.max()) >= arch[-1]:
        at = int(np.argmax(data.y >= arch[-1]))
        raise ValueError(
            f"{what}: label {int(data.y[at])} (sample {at}) is outside the task's {arch[-1]} outputs "
            f"(0..{arch[-1] - 1})"
        )


def load_npz(path: str, what: str) -> Dataset:
    """A ``Dataset`` from an .npz with arrays ``x`` (samples x features) and ``y`` (labels), and
    optionally ``n_classes``; ``what`` names the flag in errors."""
    data = load_arrays(path, what, ("x", "y"))
    return from_arrays(data["x"], data["y"], int(data["n_classes"]) if "n_classes" in data else None)
