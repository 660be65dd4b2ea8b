"""The job description (pure Python, no torch or Ray): a TOML job file validated whole into a
`JobSpec` (spec), expanded into the cells of its grid (grid), each a fully resolved `Cell`
with a content-derived key (cells), from parameters declared once (params). May import only
`runner.errors`, `runner.datasets.registry` and `methods.registry`.
"""
