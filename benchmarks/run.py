"""Run the benchmark table from a source checkout: the same as ``fastipc bench``.

    python benchmarks/run.py [--quick] [--json] [--only pipe,mq,shm,server] [--trials N]

The cases live in the installed package (``fastipc.bench``), so that ``pip install fastipc``
users can run them too; ``benchmarks/RESULTS.md`` keeps the latest full table.
"""

import sys

from fastipc.bench import main

if __name__ == "__main__":
    sys.exit(main())
