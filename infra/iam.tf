# One service account per workload, each granted only what its code does. Firestore's IAM is project-wide
# (no per-collection roles), so read-only workloads get datastore.viewer and writers datastore.user.

resource "google_service_account" "ingest" {
  account_id   = "${var.name_prefix}-ingest"
  display_name = "placeid ingest function"
}

resource "google_service_account" "predict" {
  account_id   = "${var.name_prefix}-predict"
  display_name = "placeid predict function"
}

resource "google_service_account" "trigger" {
  account_id   = "${var.name_prefix}-trigger"
  display_name = "placeid Eventarc trigger (raw bucket -> ingest)"
}

resource "google_service_account" "training" {
  account_id   = "${var.name_prefix}-training"
  display_name = "placeid training job"
}

# ingest: reads the uploaded generation, creates curated copies (create-only), writes records.
resource "google_storage_bucket_iam_member" "ingest_reads_raw" {
  bucket = google_storage_bucket.raw.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.ingest.member
}

resource "google_storage_bucket_iam_member" "ingest_writes_curated" {
  bucket = google_storage_bucket.curated.name
  role   = "roles/storage.objectCreator"
  member = google_service_account.ingest.member
}

resource "google_project_iam_member" "ingest_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.ingest.member
}

# predict: reads bundles and the catalog, writes nothing.
resource "google_storage_bucket_iam_member" "predict_reads_models" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.predict.member
}

resource "google_project_iam_member" "predict_firestore" {
  project = var.project_id
  role    = "roles/datastore.viewer"
  member  = google_service_account.predict.member
}

# training: reads curated photos, uploads bundles, records models and moves the serving pointer.
resource "google_storage_bucket_iam_member" "training_reads_curated" {
  bucket = google_storage_bucket.curated.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.training.member
}

resource "google_storage_bucket_iam_member" "training_writes_models" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectUser"
  member = google_service_account.training.member
}

resource "google_storage_bucket_iam_member" "training_reads_data" {
  count  = var.data_bucket != "" ? 1 : 0
  bucket = var.data_bucket
  role   = "roles/storage.objectViewer"
  member = google_service_account.training.member
}

resource "google_project_iam_member" "training_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.training.member
}

# Eventarc: the trigger's identity receives events and invokes the ingest function.
resource "google_project_iam_member" "trigger_receives_events" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.trigger.member
}

resource "google_cloud_run_service_iam_member" "trigger_invokes_ingest" {
  location = var.region
  service  = google_cloudfunctions2_function.ingest.service_config[0].service
  role     = "roles/run.invoker"
  member   = google_service_account.trigger.member
}

# Cloud Storage publishes its object notifications through Pub/Sub on Eventarc's behalf.
data "google_storage_project_service_account" "gcs" {}

resource "google_project_iam_member" "gcs_publishes_events" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = data.google_storage_project_service_account.gcs.member
}

# predict is private: only the named principals (and everyone, if predict_public) may invoke it.
resource "google_cloud_run_service_iam_member" "predict_invokers" {
  for_each = toset(concat(var.predict_invokers, var.predict_public ? ["allUsers"] : []))
  location = var.region
  service  = google_cloudfunctions2_function.predict.service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}

# Cloud Build (cloudbuild.yaml) runs as its own account: it deploys the two functions as their service
# accounts, pushes the training image and updates/starts the training job; it reads the test data bucket.
resource "google_service_account" "build" {
  account_id   = "${var.name_prefix}-build"
  display_name = "placeid Cloud Build pipeline"
}

resource "google_project_iam_member" "build_roles" {
  for_each = toset([
    "roles/cloudfunctions.developer",
    "roles/run.developer",
    "roles/logging.logWriter",
  ])
  project = var.project_id
  role    = each.value
  member  = google_service_account.build.member
}

resource "google_service_account_iam_member" "build_acts_as" {
  for_each = {
    ingest   = google_service_account.ingest.name
    predict  = google_service_account.predict.name
    trigger  = google_service_account.trigger.name
    training = google_service_account.training.name
  }
  service_account_id = each.value
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.build.member
}

resource "google_artifact_registry_repository_iam_member" "build_pushes_images" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.build.member
}

resource "google_storage_bucket_iam_member" "build_reads_test_data" {
  count  = var.data_bucket != "" ? 1 : 0
  bucket = var.data_bucket
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
}
