"""Model families: one folder per family and the registry that names them."""
