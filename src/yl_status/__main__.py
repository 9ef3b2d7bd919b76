import sys

from yl_status.cli import main

sys.exit(main())
