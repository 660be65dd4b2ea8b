"""The results store: a results folder of Parquet rows, one per finished or failed cell, and
per-epoch rows (store), their columns and types, the same in every file (schema), the folder
as two pandas DataFrames, cells and epochs (frames), the learning verdict that flags a cell
that did not learn (learning), the classes of failure a cell can end in (failures) and
which code made the rows, and whether a folder mixes code (code_versions), why a cell
stopped early (stops), and a re-run cell's row against its stored one, bit for bit (compare).
May import `runner.job`, `methods.registry` and `runner.errors`; nothing that runs cells or
reports.
"""
