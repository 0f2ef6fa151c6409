"""`python -m swarmheap` is the `swarmheap` command."""

import sys

from swarmheap.tools.cli import main

if __name__ == "__main__":  # not when a spawned worker imports this module as its parent's main
    sys.exit(main())
