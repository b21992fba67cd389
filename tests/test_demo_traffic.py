"""How the demo cuts a traffic pool: disjoint chunks per round and one held-out slice."""

from __future__ import annotations

import numpy as np
import pytest

from modelloop.demo import HELD_OUT, plan_traffic
from modelloop.errors import InputError


@pytest.mark.parametrize(("pool", "rounds", "per_round", "held_n", "size"), [
    (3900, 2, 600, HELD_OUT, 600),  # the founding case
    (3900, 2, 5000, HELD_OUT, 1450),  # more asked for than the pool holds: what is left, shared
    (171, 2, 600, 57, 57),  # breast-cancer's 30%
    (133, 2, 600, 44, 44),  # diabetes' 30%
    (10, 1, 600, 5, 5),
])
def test_chunks_and_held_out_slice_are_disjoint(pool, rounds, per_round, held_n, size):
    held, chunks = plan_traffic(pool, rounds, per_round, seed=3)
    assert len(held) == held_n and [len(c) for c in chunks] == [size] * rounds
    parts = [set(held.tolist())] + [set(c.tolist()) for c in chunks]
    assert sum(len(p) for p in parts) == len(set().union(*parts))  # no index in two parts
    assert set().union(*parts) <= set(range(pool))
    again, same = plan_traffic(pool, rounds, per_round, seed=3)
    assert np.array_equal(held, again) and all(np.array_equal(a, b) for a, b in zip(chunks, same, strict=True))


def test_a_pool_too_small_for_the_rounds_is_refused():
    with pytest.raises(InputError, match="'--rounds': received 3; a traffic pool of 3 examples"):
        plan_traffic(3, 3, 10)
