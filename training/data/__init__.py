"""W2S data: layout readers, checks, the simulator and the tf.data patch pipeline (see ARCHITECTURE.md)."""
