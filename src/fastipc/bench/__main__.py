import sys

from fastipc.bench import main

sys.exit(main())
