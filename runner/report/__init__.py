"""Reports: a results folder turned into the paper's tables (analysis, with ALSH-APPROX's active
sets in active_sets and the table type in tables), its figures (figures) and a page (page),
and the published numbers to compare with (published). May import `runner.results`,
`runner.job`, `runner.errors` and `methods.registry`; nothing that runs cells.
"""
