"""Files a run leaves and reads back: HDF5 checkpoints, resume, and evaluation of a saved model."""
