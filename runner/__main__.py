import sys

from runner.cli.main import process_main

sys.exit(process_main())
