"""``python -m agent.emulator``: see `agent.emulator.cli` (``main`` is re-exported for callers)."""

import sys

from agent.emulator.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
