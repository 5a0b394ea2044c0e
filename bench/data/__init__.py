"""Data: cards, generated and on-disk data sets, frame records and loaders."""
