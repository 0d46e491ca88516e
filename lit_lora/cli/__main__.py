"""`python -m lit_lora.cli`."""

import sys

from lit_lora.cli.main import main

sys.exit(main())
