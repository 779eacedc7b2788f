"""`python -m scintnode` runs the same command line as the `scintnode` console script."""

from scintnode.cli import main

raise SystemExit(main())
