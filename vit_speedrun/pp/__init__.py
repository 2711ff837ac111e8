"""Train and eval preprocessing as big_vision runs it: TF's image ops, RandAugment, the
FFCV operations (device/: the same on the device)."""
