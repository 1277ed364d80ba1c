"""Parameter layouts: the chain's flat vector against torch's state_dict order and scikit-learn's
coefs_/intercepts_, exactly, both ways; the arch read off the arrays; shapes refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsnode.consensus import model
from mpsnode.fl import layouts, mlp

archs = st.lists(st.integers(1, 9), min_size=1, max_size=3).flatmap(
    lambda hidden: st.integers(2, 6).map(lambda out: (hidden[0], *hidden[1:], out))
)


@settings(max_examples=60, deadline=None)
@given(archs, st.sampled_from(layouts.LAYOUTS), st.integers(0, 2**32 - 1))
def test_layouts_round_trip_exactly_and_name_the_arch(arch, layout, seed) -> None:
    params = np.random.default_rng(seed).normal(size=model.param_count(arch))
    arrays = layouts.to_arrays(params, arch, layout)
    assert [a.shape for a in arrays] == layouts.expected_shapes(arch, layout)
    back, read = layouts.from_arrays(arrays, layout)
    assert read == tuple(arch)
    assert np.array_equal(back, params)


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_each_layout_computes_the_chains_network(layout) -> None:
    arch = (5, 7, 4, 3)
    rng = np.random.default_rng(1)
    params = rng.normal(size=model.param_count(arch))
    x = rng.normal(size=(11, arch[0]))
    arrays = layouts.to_arrays(params, arch, layout)
    n = len(arch) - 1
    h = x
    for i in range(n):
        if layout == layouts.TORCH:
            h = h @ arrays[2 * i].T + arrays[2 * i + 1]  # torch.nn.Linear: x W^T + b
        else:
            h = h @ arrays[i] + arrays[n + i]  # MLPClassifier: x coefs_ + intercepts_
        if i < n - 1:
            h = np.maximum(h, 0)
    logits, _ = mlp.forward(params, arch, x)
    assert np.allclose(h, logits)


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")  # a few iterations are enough here
def test_a_scikit_learn_mlp_classifier_round_trips_and_predicts_alike() -> None:
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, random_state=0).fit(x[:300] / 16, y[:300])
    params, arch = layouts.from_arrays(layouts.sklearn_arrays(clf), layouts.SKLEARN)
    assert arch == (64, 16, 10)
    logits, _ = mlp.forward(params, arch, x[300:400] / 16)
    assert np.array_equal(np.argmax(logits, axis=1), clf.predict(x[300:400] / 16))
    layouts.set_sklearn_arrays(clf, layouts.to_arrays(params * 0.5, arch, layouts.SKLEARN))
    assert np.array_equal(layouts.from_arrays(layouts.sklearn_arrays(clf), layouts.SKLEARN)[0], params * 0.5)
    clf_tanh = MLPClassifier(hidden_layer_sizes=(4,), activation="tanh", max_iter=5).fit(x[:50] / 16, y[:50])
    with pytest.raises(layouts.LayoutError, match="ReLU"):
        layouts.sklearn_arrays(clf_tanh)


def test_shapes_that_are_no_chain_mlp_are_refused_by_name() -> None:
    good = layouts.to_arrays(np.zeros(model.param_count((4, 3))), (4, 3), layouts.TORCH)
    with pytest.raises(layouts.LayoutError, match="got 1 arrays"):
        layouts.arch_of(good[:1], layouts.TORCH)
    with pytest.raises(
        layouts.LayoutError, match=r"expects shapes \[\(3, 4\), \(3,\)\], got \[\(3, 4\), \(2,\)\]"
    ):
        layouts.arch_of([good[0], np.zeros(2)], layouts.TORCH)
    with pytest.raises(layouts.LayoutError, match=r"the task's arch \[4, 5, 3\] needs"):
        layouts.check_arch(good, layouts.TORCH, (4, 5, 3))
    with pytest.raises(layouts.LayoutError, match="unknown layout"):
        layouts.to_arrays(np.zeros(15), (4, 3), "keras")
    with pytest.raises(layouts.LayoutError, match="weight, bias per layer"):
        layouts.arch_of([np.zeros(4), np.zeros(1)], layouts.TORCH)


def test_a_torch_sequential_round_trips_exactly_and_computes_the_chains_network() -> None:
    torch = pytest.importorskip("torch", reason="the [torch] extra is not installed (make setup installs it)")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    arrays = layouts.torch_arrays(net)
    assert [a.shape for a in arrays] == [tuple(v.shape) for v in net.state_dict().values()]
    params, arch = layouts.from_arrays(arrays, layouts.TORCH)
    assert arch == (6, 8, 5, 3)
    x = np.random.default_rng(2).normal(size=(9, 6))
    logits, _ = mlp.forward(params, arch, x)
    with torch.no_grad():
        assert np.allclose(net(torch.from_numpy(x)).numpy(), logits, rtol=0, atol=1e-12)
    other = np.random.default_rng(3).normal(size=params.shape)
    layouts.set_torch_arrays(net, layouts.to_arrays(other, arch, layouts.TORCH))
    assert np.array_equal(layouts.from_arrays(layouts.torch_arrays(net), layouts.TORCH)[0], other)
    single = nn.Sequential(nn.Linear(4, 3))  # float32, as most torch models are: loaded in its own dtype
    layouts.set_torch_arrays(single, layouts.to_arrays(np.arange(15) / 4, (4, 3), layouts.TORCH))
    assert single[0].weight.dtype == torch.float32
    assert np.array_equal(
        layouts.from_arrays(layouts.torch_arrays(single), layouts.TORCH)[0], np.arange(15) / 4
    )


def test_torch_models_that_are_no_chain_mlp_are_refused_by_name() -> None:
    torch = pytest.importorskip("torch", reason="the [torch] extra is not installed (make setup installs it)")
    nn = torch.nn
    cases = [
        (nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), "module 1 of the nn.Sequential is Tanh"),
        (nn.Sequential(nn.Linear(4, 4), nn.ReLU()), "ends in a ReLU"),
        (nn.Sequential(nn.Linear(4, 2, bias=False)), "Linear \\(with bias\\)"),
        (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 2)), "module 2"),
        (nn.Linear(4, 2), "got Linear"),
    ]
    for net, why in cases:
        with pytest.raises(layouts.LayoutError, match=why):
            layouts.torch_arrays(net)
