"""Hydra configs of eval_learn, installed as the package data ``eval_learn.conf``."""
