"""placeid's cloud domain: configuration, Firestore and Cloud Storage, ingestion, review, catalog, model registry
and serving. Built on the edge package (placeid_edge, the inference core), which never imports it; used by the
Cloud Functions, the training job, the local tooling (placeid.local) and the command line (placeid_cli)."""

__version__ = "0.1.0"
