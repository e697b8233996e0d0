# One service account per workload, each granted only what its code does. Firestore's IAM is project-wide
# (no per-collection roles), so read-only workloads get datastore.viewer and writers datastore.user.

resource "google_service_account" "ingest" {
  account_id   = "${var.name_prefix}-ingest"
  display_name = "placeid ingest function"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "predict" {
  account_id   = "${var.name_prefix}-predict"
  display_name = "placeid predict function"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "trigger" {
  account_id   = "${var.name_prefix}-trigger"
  display_name = "placeid Eventarc trigger (raw bucket -> ingest)"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "training" {
  account_id   = "${var.name_prefix}-training"
  display_name = "placeid training job"
  depends_on   = [google_project_service.apis]
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

# ingest vets each photo with the serving model (placeid.vetting): it reads bundles and the serving pointer.
resource "google_storage_bucket_iam_member" "ingest_reads_models" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectViewer"
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
  bucket = local.data_bucket
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
  project    = var.project_id
  role       = "roles/pubsub.publisher"
  member     = data.google_storage_project_service_account.gcs.member
  depends_on = [google_project_service.apis]
}

# predict is private: only the named principals (and everyone, if predict_public) may invoke it.
resource "google_cloud_run_service_iam_member" "predict_invokers" {
  for_each = toset(concat(var.predict_invokers, var.predict_public ? ["allUsers"] : []))
  location = var.region
  service  = google_cloudfunctions2_function.predict.service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}

# Eventarc's service agent must exist and hold its role before a function with an Eventarc trigger is created
# (else the first apply fails with "Permission denied while using the Eventarc Service Agent"): create the
# identity, grant it, and give the grant time to propagate.
resource "google_project_service_identity" "eventarc" {
  provider   = google-beta # the resource exists only in the beta provider
  project    = var.project_id
  service    = "eventarc.googleapis.com"
  depends_on = [google_project_service.apis]
}

resource "google_project_iam_member" "eventarc_service_agent" {
  #checkov:skip=CKV_GCP_49:The grantee is Eventarc's own Google-managed service agent, given the role Google documents for it; no workload or person gets it.
  project = var.project_id
  role    = "roles/eventarc.serviceAgent"
  member  = google_project_service_identity.eventarc.member
}

resource "time_sleep" "eventarc_agent_propagation" {
  create_duration = "90s"
  depends_on      = [google_project_iam_member.eventarc_service_agent, google_project_iam_member.gcs_publishes_events]
}

# Function builds (Cloud Build, on deploy) run as their own account, not the default compute account that new
# organisations no longer grant build rights: write logs, read the function's source, push its image.
resource "google_service_account" "functions_build" {
  account_id   = "${var.name_prefix}-fnbuild"
  display_name = "placeid function builds"
  depends_on   = [google_project_service.apis]
}

resource "google_project_iam_member" "functions_build_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.functions_build.member
}

resource "google_storage_bucket_iam_member" "functions_build_reads_sources" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.functions_build.member
}

# `gcloud functions deploy` uploads the source to a bucket Cloud Functions creates (gcf-v2-sources-*): read
# access to those buckets only.
resource "google_project_iam_member" "functions_build_reads_uploads" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = google_service_account.functions_build.member
  condition {
    title      = "gcf-v2-sources buckets"
    expression = "resource.name.startsWith(\"projects/_/buckets/gcf-v2-sources-\")"
  }
}

resource "google_artifact_registry_repository_iam_member" "functions_build_pushes_images" {
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.functions_build.member
}

# Cloud Build (cloudbuild.yaml) runs as its own account: it deploys the two functions as their service
# accounts, pushes the training image and updates/starts the training job; it reads the staged source and the
# reference data. Grants are on the resources themselves where the API allows it.
resource "google_service_account" "build" {
  account_id   = "${var.name_prefix}-build"
  display_name = "placeid Cloud Build pipeline"
  depends_on   = [google_project_service.apis]
}

resource "google_project_iam_member" "build_roles" {
  for_each = toset([
    # `gcloud functions deploy` calls generateUploadUrl and polls operations on the location, which no
    # function-level grant covers.
    "roles/cloudfunctions.developer",
    # `gcloud run jobs update/execute` polls location-level operations and reads executions.
    "roles/run.viewer",
    "roles/logging.logWriter",
  ])
  project = var.project_id
  role    = each.value
  member  = google_service_account.build.member
}

resource "google_cloud_run_v2_job_iam_member" "build_updates_training_job" {
  location = google_cloud_run_v2_job.training.location
  name     = google_cloud_run_v2_job.training.name
  role     = "roles/run.developer"
  member   = google_service_account.build.member
}

resource "google_service_account_iam_member" "build_acts_as" {
  for_each = {
    ingest          = google_service_account.ingest.name
    predict         = google_service_account.predict.name
    trigger         = google_service_account.trigger.name
    training        = google_service_account.training.name
    functions_build = google_service_account.functions_build.name
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

resource "google_storage_bucket_iam_member" "build_reads_staged_source" {
  bucket = google_storage_bucket.build.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
}

resource "google_storage_bucket_iam_member" "build_reads_test_data" {
  bucket = local.data_bucket
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
}
