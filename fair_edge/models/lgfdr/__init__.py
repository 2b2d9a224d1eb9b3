"""LGFDR: local and global feature denoising reconstruction on a frozen pretrained backbone."""
