"""Training and evaluation of the networks on synthetic phantoms, by each paper's protocol.

`scintnode train <network>` (train/cli.py) writes weights, metrics and a model card for the node to load."""
