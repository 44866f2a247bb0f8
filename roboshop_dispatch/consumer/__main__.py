"""``python -m roboshop_dispatch.consumer``: run the dispatch consumer in the foreground."""

import sys

from roboshop_dispatch.consumer import main

if __name__ == "__main__":
    sys.exit(main())
