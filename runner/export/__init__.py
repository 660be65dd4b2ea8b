"""Exports of a results folder to the trackers researchers already use: MLflow (parent and child
runs) and TensorBoard (event files, hparams). Optional extras; may import `runner.report`,
`runner.results`, `runner.job` and `runner.errors`.
"""
