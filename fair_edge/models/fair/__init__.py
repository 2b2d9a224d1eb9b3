"""FAIR: frequency-aware image restoration (UNet on the high-pass, MSGMS + colour scoring)."""
