"""Training a GQ model with the target divergence constraint, and exporting it."""
