resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption is used; a customer-managed key is a per-organisation choice.
  repository_id = var.name_prefix
  location      = var.region
  format        = "DOCKER"
  description   = "placeid container images (the training job)"
  labels        = var.labels
  # Every build pushes a TensorFlow-sized trainer image: keep the newest few, delete the rest after a week.
  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-newest"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.trainer_images_kept
    }
  }
  cleanup_policies {
    id     = "delete-older"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "604800s"
    }
  }
  depends_on = [google_project_service.apis]
}

# The functions' images, built on each deploy by their own build account (functions_build in iam.tf).
resource "google_artifact_registry_repository" "functions" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption is used; a customer-managed key is a per-organisation choice.
  repository_id          = "${var.name_prefix}-functions"
  location               = var.region
  format                 = "DOCKER"
  description            = "placeid function images (built by Cloud Functions on deploy)"
  labels                 = var.labels
  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-newest"
    action = "KEEP"
    most_recent_versions {
      keep_count = 5
    }
  }
  cleanup_policies {
    id     = "delete-older"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "604800s"
    }
  }
  depends_on = [google_project_service.apis]
}

# The managed training job: `placeid --target cloud train --promote` in the image training/Dockerfile builds,
# with the reference data bucket mounted read-only at /data (ImageNet backbones, negative photos).
resource "google_cloud_run_v2_job" "training" {
  name                = "${var.name_prefix}-train"
  location            = var.region
  deletion_protection = false
  labels              = var.labels

  template {
    task_count = 1
    template {
      service_account       = google_service_account.training.email
      execution_environment = "EXECUTION_ENVIRONMENT_GEN2" # Cloud Storage volumes need the second generation
      timeout               = "3600s"
      max_retries           = 0
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
          for_each = merge(local.common_env, {
            PLACEID_DATA    = "/data/data"
            PLACEID_WEIGHTS = "/data/weights"
          })
          content {
            name  = env.key
            value = env.value
          }
        }
        volume_mounts {
          name       = "data"
          mount_path = "/data"
        }
      }
      volumes {
        name = "data"
        gcs {
          bucket    = local.data_bucket
          read_only = true
        }
      }
    }
  }

  lifecycle {
    ignore_changes = [template[0].template[0].containers[0].image] # Cloud Build pushes and sets new images
  }
  depends_on = [google_project_service.apis]
}
