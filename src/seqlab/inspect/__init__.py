"""Looking inside models and their outputs: rule success, novelty, heatmaps."""
