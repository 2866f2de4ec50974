"""OpenMP's spin-wait, tamed before torch loads: a second busy process must not make llmctl 7x slower.

PyTorch's CPU wheels use GNU OpenMP (libgomp), whose idle threads spin 300,000 iterations before they sleep
(GOMP_SPINCOUNT's default). With as many threads as cores and one more busy process, the spinning threads
take turns with the real work: on this project's 2-core machine `prune --method wanda` (32×512 calibration)
took 280 s beside one busy process instead of 40 s idle (benchmarks/compress_speed.py, issue 16). Measured
there, compress stage of Wanda 50 %, 2 threads:

    GOMP_SPINCOUNT        idle     beside one busy process
    300000 (default)      39.8 s   280.2 s
    10000 (llmctl)        40.9 s    94.4 s
    1000                  45.0 s    79.7 s
    0 (OMP_WAIT_POLICY=PASSIVE) 46.3 s  76.6 s
    (1 thread)            69.3 s    70.6 s

10,000 keeps the idle speed (within 3 %) and cuts the contended time 3x. A user's own GOMP_SPINCOUNT or
OMP_WAIT_POLICY wins. It must be set before the OpenMP runtime starts, i.e. before torch is imported.

Examples:
    tame_openmp_spin()      # first thing in the CLI entry point
"""

from __future__ import annotations

import os

SPIN_COUNT = "10000"  # iterations; see the table above


def tame_openmp_spin() -> None:
    """Set GOMP_SPINCOUNT for this process and its children unless the user chose a wait policy."""
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
