"""``python -m icrl_lib``: see :mod:`icrl_lib.cli`."""
import sys

from icrl_lib.cli import main

sys.exit(main())
