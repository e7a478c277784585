"""Experiment configs, one file per experiment (``get_config(arg=None)``); see each file's docstring."""
