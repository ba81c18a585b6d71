"""`python -m ipadapter_train ...` runs the CLI."""
import sys

from .cli import main

sys.exit(main())
