"""Performance: step and input throughput, MFU and peak FLOP/s, the step side by
side with the PyTorch peer, weak scaling and projections to pods and clusters."""
