import signal
import sys

from runner.cli.main import main

code = main()
# Everything is done and said: a Ctrl-C or `kill` arriving now (say, a second one while a
# sweep stopped) must not turn the exit code into a death by that signal.
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.exit(code)
