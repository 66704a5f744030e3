"""`python -m clients` is `fedguard-node`."""

import sys

from clients.node.cli import main

sys.exit(main())
