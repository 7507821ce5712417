import sys

from hyperlab.cli import main

sys.exit(main())
