"""Training: config, models, batches and augmentation, the loop (resumable, under torchrun),
the optimiser, the compute path, run folders and the choice of training samples."""
