"""The runtime layer: backends that run a bundle on named inputs, and the bundle reader they share."""
