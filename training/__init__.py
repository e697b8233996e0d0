"""The placeid training job: curated photos -> measured, versioned TFLite model bundles."""
