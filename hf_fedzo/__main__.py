"""``python -m hf_fedzo ...`` runs the ``hf-fedzo`` command line."""

import sys

from hf_fedzo.cli import main

if __name__ == "__main__":
    sys.exit(main())
