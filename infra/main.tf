locals {
  services = [
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
  ]
  suffix         = "${var.name_prefix}-${var.project_id}"
  training_image = var.training_image != "" ? var.training_image : "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}/trainer:latest"
  # What every placeid process reads (placeid/config.py ENV_VARS).
  common_env = {
    GOOGLE_CLOUD_PROJECT   = var.project_id
    PLACEID_BUCKET         = google_storage_bucket.raw.name
    PLACEID_CURATED_BUCKET = google_storage_bucket.curated.name
    PLACEID_MODELS_BUCKET  = google_storage_bucket.models.name
  }
}

resource "google_project_service" "apis" {
  for_each           = toset(local.services)
  service            = each.value
  disable_on_destroy = false
}
