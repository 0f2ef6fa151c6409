"""`python -m swarmheap` is the `swarmheap` command."""

import sys

from swarmheap.cli import main

sys.exit(main())
