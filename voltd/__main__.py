import sys

from voltd.cli import main

sys.exit(main())
