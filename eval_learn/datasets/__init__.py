"""Prompt sets that metrics own and load."""
