locals {
  # Every API a resource here needs (tests/test_infra.py maps each resource type to its API). Enabling them
  # needs serviceusage.googleapis.com, on in every new project, and cloudresourcemanager (infra/README.md,
  # "Bootstrap").
  services = [
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
  ]
  suffix = "${var.name_prefix}-${var.project_id}"
  # At the first apply no trainer image exists yet (Cloud Build pushes it later and points the job at it), so
  # the job starts from Google's public placeholder job image; Terraform then ignores the image.
  placeholder_job_image = "us-docker.pkg.dev/cloudrun/container/job:latest"
  training_image        = var.training_image != "" ? var.training_image : local.placeholder_job_image
  data_bucket           = var.data_bucket != "" ? var.data_bucket : google_storage_bucket.data[0].name
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
