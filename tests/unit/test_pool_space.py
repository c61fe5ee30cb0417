"""The pool's room for more provisioned bytes: below its free space, and within PVC's 80 %
soft cap unless forced (extensions.md §2.2, §2.3)."""

from __future__ import annotations

import pytest

from pvcd.domain.errors import InvalidValue
from pvcd.domain.pool_space import PoolSpace, check_room

SPACE = PoolSpace("vms", stored=600, free=400)  # capacity 1000


@pytest.mark.parametrize(("adding", "force"), [(0, False), (-50, False), (200, False),
                                               (399, True)])
def test_what_fits_passes(adding: int, force: bool) -> None:
    check_room(SPACE, adding, "x", force)


def test_the_free_space_is_a_hard_limit_even_with_force() -> None:
    with pytest.raises(InvalidValue, match="needs 400 bytes, but pool vms has only 400 bytes "
                                           "free"):
        check_room(SPACE, 400, "cloning vms/a", force=True)


def test_past_80_percent_needs_force() -> None:
    with pytest.raises(InvalidValue, match=r"cloning vms/a would fill pool vms to 81 % .*"
                                           r"add 'force'"):
        check_room(SPACE, 210, "cloning vms/a", force=False)
    check_room(SPACE, 210, "cloning vms/a", force=True)
