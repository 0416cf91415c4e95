"""Settings every long-running Headwater process applies to itself."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a loop that serves many small requests.

    Nearly everything a request allocates is freed by reference counting; the collector only
    has cycles to find (exception tracebacks). Freezing what start-up allocated keeps full
    collections from walking it, and a high first threshold makes young collections rare.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
