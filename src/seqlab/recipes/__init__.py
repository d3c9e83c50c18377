"""Recipes: multi-stage jobs built from the core (quickstart, ...)."""
