from __future__ import annotations

from typing import Protocol

import pytest

from .helpers import Segment, Transcript, drive, drive_both


class Driver(Protocol):
    def __call__(self, *script: Segment, **options: object) -> Transcript: ...


@pytest.fixture(params=["whole", "bytewise"])
def smtp(request: pytest.FixtureRequest) -> Driver:
    """Runs a client script fed whole, or one byte at a time.

    In byte-at-a-time mode the same script is also fed whole and the two runs must agree on
    every event and every output byte.
    """
    if request.param == "whole":

        def run_whole(*script: Segment, **options: object) -> Transcript:
            return drive(*script, chunking="whole", **options)  # type: ignore[arg-type]

        return run_whole

    def run_bytewise(*script: Segment, **options: object) -> Transcript:
        return drive_both(*script, **options)[1]

    return run_bytewise
