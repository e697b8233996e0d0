resource "google_cloudfunctions2_function" "ingest" {
  name        = "${var.name_prefix}-ingest"
  location    = var.region
  description = "Validates, dedupes and labels each photo that lands in the raw bucket."
  labels      = var.labels

  build_config {
    runtime           = "python311"
    entry_point       = "ingest"
    service_account   = google_service_account.functions_build.id
    docker_repository = google_artifact_registry_repository.functions.id
    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.function_source["ingest"].name
      }
    }
  }

  service_config {
    available_memory                 = var.ingest.memory
    available_cpu                    = var.ingest.cpu
    timeout_seconds                  = var.ingest.timeout_seconds
    min_instance_count               = var.ingest.min_instances
    max_instance_count               = var.ingest.max_instances
    max_instance_request_concurrency = var.ingest.concurrency
    service_account_email            = google_service_account.ingest.email
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    environment_variables            = local.common_env
  }

  event_trigger {
    trigger_region        = var.region
    event_type            = "google.cloud.storage.object.v1.finalized"
    retry_policy          = "RETRY_POLICY_RETRY" # transient faults raise and are redelivered; bad input returns
    service_account_email = google_service_account.trigger.email
    event_filters {
      attribute = "bucket"
      value     = google_storage_bucket.raw.name
    }
  }

  lifecycle {
    ignore_changes = [build_config[0].source] # Cloud Build deploys newer code
  }
  # The Eventarc agent's role and the Cloud Storage agent's publisher role must be in force before the trigger.
  depends_on = [google_project_service.apis, time_sleep.eventarc_agent_propagation]
}

resource "google_cloudfunctions2_function" "predict" {
  #checkov:skip=CKV_GCP_124:Phones and browsers call predict over the internet; who may call it is decided by roles/run.invoker (private by default), not by network ingress.
  name        = "${var.name_prefix}-predict"
  location    = var.region
  description = "Tells which place a photo shows (HTTPS; TensorFlow Serving routes; a page at /)."
  labels      = var.labels

  build_config {
    runtime           = "python311"
    entry_point       = "predict"
    service_account   = google_service_account.functions_build.id
    docker_repository = google_artifact_registry_repository.functions.id
    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.function_source["predict"].name
      }
    }
  }

  service_config {
    available_memory                 = var.predict.memory
    available_cpu                    = var.predict.cpu
    timeout_seconds                  = var.predict.timeout_seconds
    min_instance_count               = var.predict.min_instances
    max_instance_count               = var.predict.max_instances
    max_instance_request_concurrency = var.predict.concurrency
    service_account_email            = google_service_account.predict.email
    ingress_settings                 = "ALLOW_ALL" # reachable over HTTPS; invoking still needs roles/run.invoker
    all_traffic_on_latest_revision   = true
    environment_variables = merge(local.common_env, {
      PLACEID_CORS_ORIGINS      = var.predict_cors_origins
      PLACEID_MAX_REQUEST_BYTES = tostring(var.predict_max_request_bytes)
      PLACEID_MODEL_REFRESH_S   = tostring(var.model_refresh_seconds)
    })
  }

  lifecycle {
    ignore_changes = [build_config[0].source]
  }
  depends_on = [google_project_service.apis]
}
