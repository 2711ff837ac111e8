"""The train augmentations on the device (resize, flip, RandAugment), bit for bit as the
numba ops of vit_speedrun/pp/ compute them: kernels.py (one body per thread, CPU and CUDA
from one source) and launch.py (the host's draws and the launches)."""
