"""Data: the source registry (sources), reading tables, arrays, Parquet and images, splitting,
vocabularies; numpy arrays that train and export consume, and the training batches' image
augmentation (augment)."""
