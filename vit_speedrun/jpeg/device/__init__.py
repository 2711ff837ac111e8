"""The JPEG window decoder that runs on the device: the host only plans (record.py: the C
library cuts the window's entropy-coded bytes at the index points and copies them), the
device decodes (kernels.py: Huffman, IFAST IDCT, upsampling and colour, one thread per
group of MCUs, block or pixel), bit for bit as the CPU decode (vit_speedrun/jpeg/window.c)
does. launch.py runs the same kernels on the CPU (numba) or on a CUDA GPU."""
