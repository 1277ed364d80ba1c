"""The consensus bounds of limits.py, recomputed: each derivation holds, and the modules that rely
on a bound use this one copy of it."""

from __future__ import annotations

from mpsnode.consensus import contribution, krum, limits, model, validation

INT64_MAX = (1 << 63) - 1
INT16_ABS_MAX = 1 << 15  # |q| of an int16 delta entry


def test_krum_sums_fit_int64() -> None:
    product = INT16_ABS_MAX * INT16_ABS_MAX  # 2^30: fits int32 as well
    assert product < (1 << 31)
    gram_entry = limits.MAX_PARAMS * product
    assert gram_entry <= 1 << 52 < INT64_MAX
    distance = limits.MAX_PARAMS * ((1 << 16) - 1) ** 2
    assert distance < limits.MAX_DISTANCE == 1 << 54
    score = (limits.MAX_UPDATES - 2) * limits.MAX_DISTANCE  # the k - f - 2 smallest of at most k - 1
    assert score < 1 << 62 < INT64_MAX
    gram_row_sum = limits.MAX_UPDATES * gram_entry
    assert gram_row_sum <= 1 << 60 < INT64_MAX


def test_forward_pass_sums_fit_int64() -> None:
    pre_activation = limits.MAX_FAN_IN * limits.MODEL_CLAMP * limits.MODEL_CLAMP
    assert pre_activation < 1 << 62
    bias = limits.MODEL_CLAMP << limits.MAX_SCALE_BITS
    assert bias < 1 << 48
    assert pre_activation + bias < INT64_MAX


def test_aggregation_sums_fit_int64() -> None:
    assert limits.MAX_CLIENTS * INT16_ABS_MAX + limits.MODEL_CLAMP < INT64_MAX


def test_one_copy_of_each_bound() -> None:
    assert limits.MAX_UPDATES == limits.MAX_CLIENTS  # one update per participant per round
    assert krum.MAX_PARAMS is limits.MAX_PARAMS and krum.MAX_UPDATES is limits.MAX_UPDATES
    assert krum.MAX_DISTANCE is limits.MAX_DISTANCE
    assert model.WEIGHT_CLAMP == model.ACTIVATION_MAX == limits.MODEL_CLAMP
    assert model.MAX_FAN_IN is limits.MAX_FAN_IN and model.MAX_SCALE_BITS is limits.MAX_SCALE_BITS
    assert validation.MAX_PARAMS is limits.MAX_PARAMS and validation.MAX_CLIENTS is limits.MAX_CLIENTS


def test_contribution_sums_fit_int64() -> None:
    term = (1 << 24) - 1  # back-propagated terms and activations are clamped to 2^24 - 1
    weight_gradient = limits.MAX_VALIDATION_SAMPLES * term * limits.MODEL_CLAMP
    assert weight_gradient < 1 << 62
    bias_gradient = (limits.MAX_VALIDATION_SAMPLES * term) << limits.MAX_SCALE_BITS
    assert bias_gradient < 1 << 62
    # e = t W summed over a layer's outputs: at most a fan-in's worth (the next layer's input width)
    assert limits.MAX_FAN_IN * term * limits.MODEL_CLAMP < 1 << 62
    gain = limits.MAX_PARAMS * (1 << limits.DIRECTION_BITS) * INT16_ABS_MAX
    assert gain <= 1 << 61
    assert contribution.DIRECTION_BITS is limits.DIRECTION_BITS
    assert validation.MAX_VALIDATION_SAMPLES is limits.MAX_VALIDATION_SAMPLES
