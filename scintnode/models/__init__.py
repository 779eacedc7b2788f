"""The networks scintnode runs, one module per paper, and the registry that names them."""
