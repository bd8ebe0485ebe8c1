"""Connection ids never collide between workers (issue 10 §7: worker 1's connection 0x10 and
worker 0x11's connection 0 were both "110")."""

from __future__ import annotations

import pytest

from mailwarden.smtp.server import connection_id

MAX_WORKERS = 1024  # node.workers allows up to 1024


def test_ids_of_different_workers_never_collide() -> None:
    # Exhaustive over the first workers and connections, plus the largest worker indices.
    workers = [*range(64), *range(MAX_WORKERS - 16, MAX_WORKERS)]
    numbers = range(4096)
    seen: dict[str, tuple[int, int]] = {}
    for worker in workers:
        for number in numbers:
            made = connection_id(worker, number)
            assert made not in seen, f"{made} made by {seen[made]} and {(worker, number)}"
            seen[made] = (worker, number)


def test_the_example_of_the_issue() -> None:
    assert connection_id(1, 0x10) != connection_id(0x11, 0)


def test_the_worker_field_has_a_fixed_width() -> None:
    assert {len(connection_id(w, 0)) for w in range(MAX_WORKERS)} == {4}
    assert connection_id(0x3FF, 0xABC) == "3ffabc"


def test_a_worker_index_beyond_the_field_is_refused() -> None:
    with pytest.raises(ValueError):
        connection_id(16**3, 1)
