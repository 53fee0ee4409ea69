import sys

from pybdev.app import main

sys.exit(main())
