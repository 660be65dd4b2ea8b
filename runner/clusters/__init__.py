"""Running a sweep on cluster schedulers: the sbatch script of `python -m runner slurm` and its
submission (slurm), and the Ray node launcher that script starts inside an allocation
(slurm_node). May import `runner.job`, `runner.results`, `runner.datasets` and
`runner.errors`.
"""
