"""placeid core library: shared by the Cloud Functions, the training job and the edge package."""

__version__ = "0.1.0"
