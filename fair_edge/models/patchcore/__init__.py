"""PatchCore: a memory bank of locally aware patch features of normal images (Roth et al., CVPR 2022)."""
