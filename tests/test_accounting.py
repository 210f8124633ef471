"""The ledger: where every expected item ended, from the committed tables alone."""

import pyarrow as pa

from varireal_ray import accounting


def test_each_item_ends_in_the_state_its_last_committed_event_says():
    committed = {
        "rows": pa.table({"id": ["a", "b"], "accepted": [True, False]}),
        "attempts": pa.table({"id": ["a", "b", "c", "c", "d", "e", "f"], "attempt": [0, 2, 0, 1, 0, 2, 0],
                              "outcome": ["accepted", "kept_flagged", "retry", "dropped", "retry", "retry", "retry"]}),
        "errors": pa.table({"id": ["d", "e", "g"], "attempt": [1, 1, 0], "error": ["x", "y", "z"]}),
    }
    expected = {"a", "b", "c", "d", "e", "f", "g", "h"}
    got = {state: sorted(ids.to_pylist()) for state, ids in accounting.item_outcomes(expected, committed).items()}
    assert got == {
        "accepted": ["a"],
        "flagged": ["b"],  # committed, not accepted: kept flagged after its last attempt
        "dropped": ["c"],
        "error": ["d", "g"],  # d failed in its retry
        "pending": ["e", "f", "h"],  # e failed, then was judged again and waits for a retry; h never started
    }
    assert sum(accounting.item_states(expected, committed).values()) == len(expected)


def test_a_run_with_nothing_committed_has_every_item_pending():
    empty = {"rows": pa.table({}), "attempts": pa.table({}), "errors": pa.table({})}
    assert accounting.item_states({"x", "y"}, empty) == {"accepted": 0, "flagged": 0, "error": 0, "dropped": 0, "pending": 2}
