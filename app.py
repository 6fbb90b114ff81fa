"""`python app.py [options]` launches IRIS Studio (the same as the `iris-studio` command)."""

import sys

from iris_studio.cli import main

if __name__ == "__main__":
    sys.exit(main())
