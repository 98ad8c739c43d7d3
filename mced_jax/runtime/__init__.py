"""The lowest layer: files (local or URL), metrics writers, checkpoints, the device
mesh and sharding, multi-host start-up, preemption, periodic work, and the tools'
flag parsing. It imports nothing else of the project; everything may import it."""
