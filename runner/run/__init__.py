"""Running cells: the function a Ray task (or the serial executor) calls for one cell (cellrun)
and the training loop every method shares (trainer), mid-cell checkpoints, the executors, the
driver loop that fans cells out and stores what comes back (sweep), thread and core limits,
the allocator, failure classes, time estimates and what a row records of the code that made
it (provenance). May import `runner.job`, `runner.results`, `runner.datasets`,
`runner.errors` and `methods`.
"""
