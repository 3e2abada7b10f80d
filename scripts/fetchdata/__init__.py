"""The pieces of scripts/fetch_data.py (`make data`): manifest -> download -> extract ->
normalise -> split, run by pipeline.run(). Only the standard library, Pillow and NumPy."""
