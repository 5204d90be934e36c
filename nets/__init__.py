"""Feature-extractor definitions that tf_slim does not ship (or ships unusable).

Each module defines one network family with the variable names of the official
slim ImageNet checkpoints, so those checkpoints restore unchanged.
"""
