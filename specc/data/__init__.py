"""Data: reading tables, splitting, vocabularies; numpy arrays that train and export consume, and the
training batches' image augmentation (augment)."""
