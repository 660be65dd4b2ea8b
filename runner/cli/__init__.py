"""The command line: `python -m runner VERB ...` parses arguments (main), calls the Python API
(runner.api) or a library module once per verb and renders what comes back with rich:
sweep_verbs (submit, slurm, plan), folder_verbs (status, report, export), data_verbs,
bench_verbs, the tables they print (tables), the live progress of a sweep from its events
(progress) and the consoles (output). The only package that prints; it may import every
other.
"""
