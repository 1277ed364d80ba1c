"""Every consensus bound, once, with the arithmetic that makes it necessary.

Round closing computes in fixed-width integers (int16 deltas, int32 weights, int64 sums); these
bounds are what keep every sum in range, and CREATE_TASK enforces them (``validation.validate_create_task``),
so no round close can overflow. ``tests/test_limits.py`` recomputes each derivation.

Krum (``krum.py``): a delta entry is int16, ``|q| <= 2^15``, so a product ``q_i q_j`` is at most
``2^30``; a Gram entry sums ``d <= MAX_PARAMS`` of them: ``2^22 * 2^30 = 2^52 < 2^63``. A squared
distance is at most ``d * (2^16 - 1)^2 < 2^54`` (``MAX_DISTANCE``) and a score sums at most
``k - 2 < MAX_CLIENTS`` of them: ``2^8 * 2^54 = 2^62 < 2^63``. A row sum of the Gram matrix over
``k <= 256`` rows is at most ``2^60``.

The model (``model.py``): weights and hidden activations lie within ``MODEL_CLAMP = 2^24 - 1``;
a layer's pre-activation sums ``fan_in <= MAX_FAN_IN = 2^14`` products of at most ``(2^24 - 1)^2``:
``2^14 * (2^24 - 1)^2 < 2^62``, plus the bias shifted by ``scale_bits <= MAX_SCALE_BITS = 24``:
``(2^24 - 1) << 24 < 2^48``; the sum stays below ``2^63``.

Contribution (``contribution.py``): the backward pass sums, over ``samples <= MAX_VALIDATION_SAMPLES
= 2^14`` validation samples, products of a back-propagated term and an activation, both at most
``2^24``: ``2^14 * 2^48 = 2^62``; its bias sums ``2^14 * 2^24`` terms shifted by ``scale_bits``:
``2^62``. The direction it yields is kept below ``2^24`` per parameter, so an update's gain sums
``d`` products below ``2^24 * 2^15``: ``2^22 * 2^39 = 2^61``.

Aggregation: ``m <= MAX_CLIENTS`` deltas of ``|q| <= 2^15`` sum to at most ``2^23``, far inside int64.
"""

from __future__ import annotations

MAX_PARAMS = 1 << 22  # parameters of a task's model (Krum's Gram entries stay below 2^52)
MAX_CLIENTS = 256  # participants of a task, so updates of a round (Krum's scores stay below 2^62)
MAX_UPDATES = MAX_CLIENTS  # the rows Krum scores in one round: one update per participant
MIN_SCORED_UPDATES = 3  # a round with fewer updates is void: Krum with f = 0 needs k >= 2f + 3 = 3
MODEL_CLAMP = (1 << 24) - 1  # |w| for every weight, and the hidden activations' ceiling
MAX_FAN_IN = 1 << 14  # widths of every layer but the last (2^14 * (2^24 - 1)^2 < 2^62)
MAX_SCALE_BITS = 24  # fixed-point bits of weights, inputs and deltas ((2^24 - 1) << 24 < 2^48)
MAX_DISTANCE = 1 << 54  # every squared distance of int16 rows of <= MAX_PARAMS entries is below this
MAX_VALIDATION_SAMPLES = 1 << 14  # the backward pass's sums over samples stay below 2^62
DIRECTION_BITS = 24  # |contribution direction| < 2^24 per parameter: a gain stays below 2^61

# Bounds of CREATE_TASK's other fields (sizes a node must be able to hold, not overflow bounds)
MAX_LAYERS = 16
MAX_CLASSES = 256  # labels are uint8
MAX_ROUNDS = 100_000
MAX_BLOCKS = 1_000_000  # join_blocks and round_blocks
MAX_LOCAL_EPOCHS = 1000
MAX_BPS = 10_000  # basis points: 10000 = 100%
