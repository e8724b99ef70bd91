"""Dataset readers and the simplified/original representations built from them."""
