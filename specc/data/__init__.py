"""Data: reading tables, splitting, vocabularies; numpy arrays that train and export consume."""
