# Three buckets: photos land in raw (their finalize events trigger ingestion), normalised copies go to curated
# (the training data), model bundles to models (the registry). Uniform access, no public access, and access
# logs in a log bucket of their own.

resource "google_storage_bucket" "logs" {
  #checkov:skip=CKV_GCP_62:This is the access-log bucket itself; logging it into itself would loop.
  #checkov:skip=CKV_GCP_78:Access logs are append-only records; versioning them adds cost, not safety.
  name                        = "${local.suffix}-logs"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels
  lifecycle_rule {
    condition {
      age = 365
    }
    action {
      type = "Delete"
    }
  }
  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "raw" {
  #checkov:skip=CKV_GCP_78:Uploads are never overwritten in place (ingestion reads the exact generation of each event); their lifetime is the retention rule.
  name                        = "${local.suffix}-raw"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels
  logging {
    log_bucket = google_storage_bucket.logs.name
  }
  lifecycle_rule {
    condition {
      age = var.raw_retention_days
    }
    action {
      type = "Delete"
    }
  }
  lifecycle_rule {
    condition {
      age = 30
    }
    action {
      type          = "SetStorageClass"
      storage_class = "NEARLINE"
    }
  }
  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }
  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "curated" {
  name                        = "${local.suffix}-curated"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels
  logging {
    log_bucket = google_storage_bucket.logs.name
  }
  versioning {
    enabled = true
  }
  lifecycle_rule {
    condition {
      num_newer_versions = 1
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }
  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "models" {
  name                        = "${local.suffix}-models"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels
  logging {
    log_bucket = google_storage_bucket.logs.name
  }
  versioning {
    enabled = true
  }
  lifecycle_rule {
    condition {
      num_newer_versions = var.model_versions_kept
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }
  depends_on = [google_project_service.apis]
}

# The functions' deployable code (placeid package functions), uploaded by Terraform; Cloud Build redeploys
# newer code with gcloud, so the functions ignore later changes of these objects.
resource "google_storage_bucket" "sources" {
  #checkov:skip=CKV_GCP_78:Each upload has a new name (its md5); nothing is overwritten.
  name                        = "${local.suffix}-sources"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels
  logging {
    log_bucket = google_storage_bucket.logs.name
  }
  lifecycle_rule {
    condition {
      age = 180
    }
    action {
      type = "Delete"
    }
  }
  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_object" "function_source" {
  for_each = toset(["ingest", "predict"])
  name     = "functions/${each.value}-${filemd5("${var.function_source_dir}/${each.value}.zip")}.zip"
  bucket   = google_storage_bucket.sources.name
  source   = "${var.function_source_dir}/${each.value}.zip"
}

# Cloud Storage writes the other buckets' access logs as cloud-storage-analytics@google.com: it must be allowed
# to create objects here, or no log is ever delivered.
resource "google_storage_bucket_iam_member" "logs_delivery" {
  bucket = google_storage_bucket.logs.name
  role   = "roles/storage.objectCreator"
  member = "group:cloud-storage-analytics@google.com"
}

# Reference data laid out like ../shared (data/world30, data/negatives, weights): the test suite's photos in
# Cloud Build and the training job's ImageNet backbones and negative photos (mounted at /data). Made here
# unless var.data_bucket names an existing one; fill it once (infra/README.md, "Reference data").
resource "google_storage_bucket" "data" {
  count                       = var.data_bucket == "" ? 1 : 0
  name                        = "${local.suffix}-data"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels
  logging {
    log_bucket = google_storage_bucket.logs.name
  }
  versioning {
    enabled = true
  }
  lifecycle_rule {
    condition {
      num_newer_versions = 1
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }
  depends_on = [google_project_service.apis]
}

# Where `gcloud builds submit --gcs-source-staging-dir=gs://<this>/source` stages the source: a bucket the
# build's own service account may read (it has no access to the default <project>_cloudbuild bucket).
resource "google_storage_bucket" "build" {
  #checkov:skip=CKV_GCP_78:Each submit stages its source under a new name; nothing is overwritten, and old tarballs expire.
  name                        = "${local.suffix}-build"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels
  logging {
    log_bucket = google_storage_bucket.logs.name
  }
  lifecycle_rule {
    condition {
      age = 30
    }
    action {
      type = "Delete"
    }
  }
  depends_on = [google_project_service.apis]
}
