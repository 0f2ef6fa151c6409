"""`python -m swarmheap` is the `swarmheap` command."""

import sys

from swarmheap.tools.cli import main

sys.exit(main())
