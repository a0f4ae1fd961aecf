"""``python -m icrl_lib``: see :mod:`icrl_lib.cli`."""
import sys

from .cli import main

sys.exit(main())
