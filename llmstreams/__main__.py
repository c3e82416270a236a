import sys

from llmstreams.cli import main

sys.exit(main())
