"""Datasets that need no download -- built in the issues after the foundation."""
