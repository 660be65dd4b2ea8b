import signal
import sys

from runner.cli.main import main
from runner.run.sweep import interrupt_handling

# The whole command, its summary included, under the sweep's signal handling: a second Ctrl-C
# or a `kill` while a stopped sweep prints how to resume is acknowledged, not obeyed. Once all
# is said, signals are ignored, so that none turns the exit code into a death by that signal.
with interrupt_handling(afterwards=signal.SIG_IGN):
    code = main()
sys.exit(code)
