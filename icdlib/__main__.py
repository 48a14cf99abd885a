import sys

from icdlib.cli import main

sys.exit(main())
