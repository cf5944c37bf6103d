"""Stage commands (``python -m fian_pipeline.<stage> ...``) and the one stage registry.

Importing this package (every stage command does, before torch is imported) sets the OpenMP
runtime's defaults for a shared machine, unless the environment already sets them:

- ``GOMP_SPINCOUNT=10000`` (ours, issue 21 item 5; libgomp, the OpenMP runtime of torch's CPU
  build): a thread waiting for the next parallel region spins at most ~10^4 times, then sleeps.
  libgomp's own default spins ~300,000 times: with other processes on the cores the spinning
  threads burn the CPU that the thread everyone waits for needs (a demo step at 2 threads, load
  15-20: 40-72 s instead of ~1-2 s). ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once) is as good under
  load but doubles a tiny model's step on a quiet machine; the bounded spin keeps the quiet speed.
  bench/contention.py measures the three (bench/RESULTS.md "Threads under contention").
- ``KMP_BLOCKTIME=1`` (ours): the same bounded wait (1 ms) for Intel's OpenMP runtime, if a build uses it.

The number of threads is the job's ``threads:`` (pipeline/registry.py, capped by ``--cores``):
Snakemake sets ``OMP_NUM_THREADS`` to it and torch takes its intra-op threads from it.  On a
dedicated node, set ``OMP_WAIT_POLICY=ACTIVE`` (or any of these) in the environment.
"""

import os as _os

if "OMP_WAIT_POLICY" not in _os.environ:  # a policy given by the user decides alone
    _os.environ.setdefault("GOMP_SPINCOUNT", "10000")
_os.environ.setdefault("KMP_BLOCKTIME", "1")
