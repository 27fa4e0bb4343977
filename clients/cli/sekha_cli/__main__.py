"""`python -m sekha_cli`: the `sekha` command without the console script."""

import sys

from sekha_cli.main import main

sys.exit(main())
