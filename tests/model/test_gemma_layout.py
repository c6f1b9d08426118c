"""Gemma's interleaved layers are scanned in repeating groups, never unrolled one by one."""
from __future__ import annotations

from jaxserve.model.gemma import layer_groups

S, F = "sliding", "full"


def test_gemma3_270m_is_three_whole_groups_of_five_sliding_and_one_full():
    assert layer_groups(((S,) * 5 + (F,)) * 3) == (((S, 5), (F, 1)), 3, ())


def test_gemma3_1b_leaves_a_partial_group_of_two_sliding_layers():
    kinds = tuple(F if (i + 1) % 6 == 0 else S for i in range(26))
    assert layer_groups(kinds) == (((S, 5), (F, 1)), 4, ((S, 2),))


def test_gemma2_alternates_and_uniform_stacks_are_one_group():
    assert layer_groups((S, F) * 13) == (((S, 1), (F, 1)), 13, ())
    assert layer_groups((F,) * 30) == (((F, 1),), 30, ())
