"""``python -m chaos --profile quick --report-dir chaos-report``."""

import sys

from chaos._cli import main

sys.exit(main())
