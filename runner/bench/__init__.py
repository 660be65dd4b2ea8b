"""`python -m runner bench`: how fast the methods train (epochs: each method's epoch against a
plain PyTorch loop, with the project's speed targets) and how fast the runner runs them (sweep).

May import the errors, the datasets, the job, the results, the run stage, the report's readers
and the methods; only the command line imports it."""
