"""`python -m llmstreams.mock`: the `llmstreams mock` command on its own."""

import sys

from llmstreams.commands.mock import main

sys.exit(main())
