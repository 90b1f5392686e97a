"""Explaining predictions: attention rollout (Abnar & Zuidema 2020) and its rendering."""
