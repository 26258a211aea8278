import sys

from metarec.cli import main

sys.exit(main())
