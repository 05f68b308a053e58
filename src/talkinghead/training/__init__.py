"""Pieces every trainer shares: data preparation, the weights' moving average."""
