"""The parts of the speedrun; the root scripts (write_ffcv, train_vit, rand_augment,
benchmark, demo) are what a user runs. One folder a concern: jpeg/ (TF's JPEG decode of a
crop window, on the CPU and on the device), pp/ (TF's image ops, RandAugment, the FFCV
pipeline), models/ (the ViT), train/ (the trainer's settings and helpers), data/ (what a
.beton's sidecar says, the benchmark photos); twin.py (one kernel source, CPU and CUDA)."""
