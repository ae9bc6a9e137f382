import sys

from robolearn.cli.main import main

sys.exit(main())
