"""Data: the source and split registries (sources, splits), reading tables, arrays, Parquet and
images, splitting, vocabularies; numpy arrays that train and export consume, and the training
batches' image augmentation (augment)."""
