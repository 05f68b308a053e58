"""face layer."""
