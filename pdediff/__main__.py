import sys

from pdediff.cli import main

sys.exit(main())
