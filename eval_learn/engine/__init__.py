"""The engine every run goes through: plan, generate each image once into the store, judge (see run.py)."""
