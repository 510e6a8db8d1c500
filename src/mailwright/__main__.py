"""``python -m mailwright`` is the ``mailwright`` command."""
import sys

from .cli.main import main

sys.exit(main())
