"""``python -m toolkit.cli`` is the same as the ``mae3d`` console script."""

from toolkit.cli import main

main()
