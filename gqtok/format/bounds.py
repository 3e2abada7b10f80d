"""What an ANS stream can hold: the arithmetic behind the .gq payload rules, without numpy.

The container checks header fields with it before anything is decoded (and ``gqtok --help``
/ ``info`` import the container, so this stays free of numpy); gqtok.format.entropy codes the
streams these bounds describe. docs/format.md#tokens states the rules.
"""

from __future__ import annotations

import math

PRECISION = 24  # constriction's default: probabilities in units of 2^-24, 32-bit words
MIN_SIZE = 2  # constriction's categorical models need two symbols...
MAX_SIZE = (1 << PRECISION) - 2  # ...and a nonzero slot of the 2^24 for each one
FREE_BITS = 64  # information a stream's free index-0 tail may carry (see the module docstring)
# Bounds on what a stream of T bytes can hold, measured against constriction (tests): a token
# costs at least its information content less LOSS_BITS (ANS rounding, state >= 2^8 slots),
# at most PRECISION + LOSS_BITS bits, and the coder's start and end add at most SLACK_BITS.
LOSS_BITS = 1 / 128
SLACK_BITS = 128


def quantized_max(p_max: float, size: int) -> float:
    """Upper bound, in units of 2^-24, on the slot constriction's (non-perfect) quantizer gives
    a symbol of probability ``p_max`` among ``size``: each symbol gets one slot plus its share
    of the other 2^24 - size, rounded down at both ends of its interval."""
    total = 1 << PRECISION
    return min(float(total - (size - 1)), p_max * (total - size) + 3.0)


def token_limit(payload_bytes: int, size: int, p_max: float, zero_slot: float) -> int | None:
    """Most tokens a payload of ``payload_bytes`` can hold under a model of ``size`` symbols
    whose largest probability is ``p_max`` and whose index 0 has at most ``zero_slot`` 2^-24
    slots; None where the model is so skewed that a token may cost nearly nothing."""
    bits_min = PRECISION - math.log2(quantized_max(p_max, size))
    per_token = bits_min - LOSS_BITS
    if per_token <= 0:
        return None
    return free_tail_limit(zero_slot) + int((8 * payload_bytes + SLACK_BITS) / per_token)


def payload_limit(tokens: int) -> int:
    """Most bytes an ANS stream of ``tokens`` symbols can take: 24 bits and a rounding loss
    each at worst (a symbol of one slot), plus the coder's head, in whole 32-bit words."""
    bits = tokens * PRECISION + math.ceil(tokens * LOSS_BITS) + SLACK_BITS
    return 4 * (bits // 32 + 1)


def free_tail_limit(zero_slot: float) -> int:
    """How many index-0 tokens an empty coder may yield: FREE_BITS of information."""
    return int(FREE_BITS / (PRECISION - math.log2(zero_slot)))
