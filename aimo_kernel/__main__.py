import sys

from aimo_kernel.cli import main

if __name__ == "__main__":
    sys.exit(main())
