resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption is used; a customer-managed key is a per-organisation choice.
  repository_id = var.name_prefix
  location      = var.region
  format        = "DOCKER"
  description   = "placeid container images (the training job)"
  labels        = var.labels
  depends_on    = [google_project_service.apis]
}

# The managed training job: `placeid --target cloud train --promote` in the image training/Dockerfile builds.
resource "google_cloud_run_v2_job" "training" {
  name                = "${var.name_prefix}-train"
  location            = var.region
  deletion_protection = false
  labels              = var.labels

  template {
    task_count = 1
    template {
      service_account = google_service_account.training.email
      timeout         = "3600s"
      max_retries     = 0
      containers {
        image = local.training_image
        args  = var.training_args
        resources {
          limits = {
            cpu    = var.training_resources.cpu
            memory = var.training_resources.memory
          }
        }
        dynamic "env" {
          for_each = merge(local.common_env, var.data_bucket != "" ? {
            PLACEID_DATA    = "/data/data"
            PLACEID_WEIGHTS = "/data/weights"
          } : {})
          content {
            name  = env.key
            value = env.value
          }
        }
        dynamic "volume_mounts" {
          for_each = var.data_bucket != "" ? [1] : []
          content {
            name       = "data"
            mount_path = "/data"
          }
        }
      }
      dynamic "volumes" {
        for_each = var.data_bucket != "" ? [1] : []
        content {
          name = "data"
          gcs {
            bucket    = var.data_bucket
            read_only = true
          }
        }
      }
    }
  }

  lifecycle {
    ignore_changes = [template[0].template[0].containers[0].image] # Cloud Build pushes and sets new images
  }
  depends_on = [google_project_service.apis]
}
