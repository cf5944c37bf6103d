"""Stage commands (``python -m fian_pipeline.<stage> ...``) and the one stage registry.

Importing this package (every stage command does, before torch is imported) sets the OpenMP
runtime's defaults for a shared machine, unless the environment already sets them:

- ``OMP_WAIT_POLICY=PASSIVE`` (ours, issue 21 item 5; libgomp, the OpenMP runtime of torch's CPU
  build): a thread waiting for the next parallel region sleeps instead of spinning.  With other
  processes on the cores, spinning threads burn the CPU that the thread everyone waits for needs;
  bench/contention.py measures it (bench/RESULTS.md "Threads under contention").
- ``KMP_BLOCKTIME=0`` (ours): the same for Intel's OpenMP runtime, if a build uses it.

The number of threads is the job's ``threads:`` (pipeline/registry.py, capped by ``--cores``):
Snakemake sets ``OMP_NUM_THREADS`` to it and torch takes its intra-op threads from it.  To spin
again (a dedicated node), set ``OMP_WAIT_POLICY=ACTIVE`` in the environment.
"""

import os as _os

for _key, _value in (("OMP_WAIT_POLICY", "PASSIVE"), ("KMP_BLOCKTIME", "0")):
    _os.environ.setdefault(_key, _value)
