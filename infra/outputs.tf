output "predict_url" {
  description = "HTTPS URL of the predict function (callers need roles/run.invoker unless predict_public)."
  value       = google_cloudfunctions2_function.predict.service_config[0].uri
}

output "ingest_function" {
  description = "Name of the ingest function (triggered by uploads to the raw bucket)."
  value       = google_cloudfunctions2_function.ingest.name
}

output "raw_bucket" {
  description = "Upload photos here as raw/<place_id>/<file> (placeid collect upload)."
  value       = google_storage_bucket.raw.name
}

output "curated_bucket" {
  description = "Normalised copies of accepted photos (the training data)."
  value       = google_storage_bucket.curated.name
}

output "models_bucket" {
  description = "Model bundles (models/<version>/), the registry's storage."
  value       = google_storage_bucket.models.name
}

output "training_job" {
  description = "Cloud Run job that trains, registers and (when not worse) promotes a model."
  value       = google_cloud_run_v2_job.training.name
}

output "artifact_registry" {
  description = "Docker repository for the training image."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "placeid_env" {
  description = "Environment for the placeid CLI against this deployment (with --target cloud)."
  value       = local.common_env
}

output "build_service_account" {
  description = "Service account to run cloudbuild.yaml with (its serviceAccount field)."
  value       = google_service_account.build.email
}

output "data_bucket" {
  description = "Reference data (data/world30, data/negatives, weights): Cloud Build's test data, mounted at /data in the training job."
  value       = local.data_bucket
}

output "build_bucket" {
  description = "Bucket for `gcloud builds submit --gcs-source-staging-dir=gs://<this>/source` (the build account reads it)."
  value       = google_storage_bucket.build.name
}

output "cloudbuild_submit" {
  description = "The command that runs cloudbuild.yaml against this deployment, from the repository root."
  value = join(" ", [
    "gcloud builds submit --config=cloudbuild.yaml --region=${var.region} --project=${var.project_id}",
    "--gcs-source-staging-dir=gs://${google_storage_bucket.build.name}/source",
    "--substitutions=_REGION=${var.region},_NAME_PREFIX=${var.name_prefix},_DATA_BUCKET=${local.data_bucket}",
  ])
}
