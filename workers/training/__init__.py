"""`vosd train` and `vosd weights`: XMem training stages and model weights management."""
