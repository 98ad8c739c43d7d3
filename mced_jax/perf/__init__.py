"""Performance: step and input throughput, MFU and peak FLOP/s, weak scaling and
projections to pods and clusters."""
